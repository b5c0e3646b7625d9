"""The promotion gate on hand-made tags: first champion, the improvement margin, every guard."""

from __future__ import annotations

import pytest

from vaegan.config import RegistryConfig
from vaegan.registry.gate import Candidate, decide_promotion, relative_improvement

REGISTRY = RegistryConfig(min_improvement=0.02, max_fid=60.0, min_evaluator_accuracy=0.95)


def candidate(
    fid: float | str | None = 30.0,
    accuracy: float = 0.99,
    pair: str = "pair-a",
    encoder_pair: str | None = None,
    parity: str = "true",
    version: str = "1",
    **extra: str,
) -> Candidate:
    """One registration whose encoder and decoder carry the same tags (unless told otherwise)."""
    tags = {
        "pair_id": pair,
        "parity_passed": parity,
        "metric.evaluator_test_accuracy": repr(accuracy),
        "metric.num_samples": "10000",
        "metric.feature_extractor": "lenet",
        **extra,
    }
    if fid is not None:
        tags["metric.fid"] = str(fid)
    encoder_tags = {**tags, "pair_id": encoder_pair if encoder_pair is not None else pair}
    return Candidate(version, version, tags, encoder_tags)


def test_first_champion_needs_only_the_absolute_guards() -> None:
    decision = decide_promotion(candidate(fid=59.9), None, REGISTRY)
    assert decision.promote
    assert decision.failed == []
    assert [check.name for check in decision.checks] == [
        "pair", "parity", "max_fid", "evaluator_accuracy", "first_champion",
    ]  # fmt: skip
    assert decision.compared["challenger_fid"] == pytest.approx(59.9)
    assert decision.compared["champion_fid"] is None


@pytest.mark.parametrize(
    ("challenger", "failed", "named"),
    [
        (candidate(fid=60.0), "max_fid", "registry.max_fid 60"),
        (candidate(fid="nan"), "max_fid", "fid nan is not a FID (a positive finite number)"),
        (candidate(fid=-5.0), "max_fid", "fid -5 is not a FID"),
        (candidate(fid=0.0), "max_fid", "fid 0 is not a FID"),
        (candidate(fid="-inf"), "max_fid", "fid -inf is not a FID"),
        (candidate(fid=None), "max_fid", "fid missing"),
        (candidate(accuracy=0.949), "evaluator_accuracy", "registry.min_evaluator_accuracy 0.95"),
        (
            candidate(accuracy=float("inf")),
            "evaluator_accuracy",
            "inf is not an accuracy (a number in [0, 1])",
        ),
        (candidate(accuracy=1.5), "evaluator_accuracy", "1.5 is not an accuracy"),
        (candidate(accuracy=-0.1), "evaluator_accuracy", "-0.1 is not an accuracy"),
        (candidate(accuracy=float("nan")), "evaluator_accuracy", "nan is not an accuracy"),
        (candidate(parity="false"), "parity", "parity did not pass"),
        (candidate(encoder_pair="pair-b"), "pair", "pair_id pair-a vs pair-b"),
        (candidate(pair=""), "pair", "not one registration"),
    ],
)
def test_each_guard_refuses_a_first_champion_and_names_itself(
    challenger: Candidate, failed: str, named: str
) -> None:
    decision = decide_promotion(challenger, None, REGISTRY)
    assert not decision.promote
    assert decision.failed == [failed]
    reason = next(r for r in decision.reasons if r.startswith(f"FAIL {failed}:"))
    assert named in reason


def test_guards_apply_with_a_champion_too() -> None:
    champion = candidate(fid=50.0, pair="old", version="1")
    decision = decide_promotion(candidate(fid=10.0, accuracy=0.5, version="2"), champion, REGISTRY)
    assert not decision.promote
    assert decision.failed == ["evaluator_accuracy"]


@pytest.mark.parametrize(
    ("fid", "promote"),
    [
        (48.9, True),  # 2.2 % better
        (49.0, True),  # exactly 2 %: "at least" min_improvement
        (49.1, False),  # 1.8 % better: within the margin
        (50.0, False),  # equal
        (55.0, False),  # worse
    ],
)
def test_improvement_margin_is_relative_to_the_champion(fid: float, promote: bool) -> None:
    champion = candidate(fid=50.0, pair="old", version="1")
    decision = decide_promotion(candidate(fid=fid, pair="new", version="2"), champion, REGISTRY)
    assert decision.promote is promote
    assert decision.failed == ([] if promote else ["improvement"])
    assert decision.compared["champion_fid"] == 50.0
    assert decision.compared["relative_improvement"] == pytest.approx((50.0 - fid) / 50.0)
    improvement = next(r for r in decision.reasons if "improvement:" in r)
    assert "registry.min_improvement 2.00%" in improvement
    assert "decoder v1 + encoder v1" in improvement


def test_the_champion_itself_is_not_promoted_again() -> None:
    champion = candidate(fid=30.0, pair="same")
    decision = decide_promotion(candidate(fid=30.0, pair="same"), champion, REGISTRY)
    assert not decision.promote
    assert decision.failed == ["new"]
    assert "already the champion" in decision.reasons[-1]


@pytest.mark.parametrize(
    ("tag", "champion_value", "challenger_value"),
    [
        ("metric.num_samples", "10000", "2000"),
        ("metric.num_test", "10000", "1000"),
        ("metric.feature_extractor", "lenet", "inception"),
        ("evaluator_sha256", "aaa", "bbb"),
    ],
)
def test_fids_of_different_settings_are_not_compared(
    tag: str, champion_value: str, challenger_value: str
) -> None:
    champion = candidate(fid=50.0, pair="old", **{tag: champion_value})
    challenger = candidate(fid=10.0, pair="new", version="2", **{tag: challenger_value})
    decision = decide_promotion(challenger, champion, REGISTRY)
    assert not decision.promote
    assert decision.failed == ["comparable"]
    assert f"{tag} {champion_value} vs {challenger_value}" in " ".join(decision.reasons)


def test_every_failing_check_is_listed() -> None:
    decision = decide_promotion(candidate(fid=80.0, accuracy=0.1, parity="false"), None, REGISTRY)
    assert decision.failed == ["parity", "max_fid", "evaluator_accuracy"]
    assert len(decision.reasons) == 5


def test_relative_improvement_is_undefined_without_a_positive_champion_fid() -> None:
    assert relative_improvement(1.0, 0.0) is None
    assert relative_improvement(None, 10.0) is None
    assert relative_improvement(float("inf"), 10.0) is None
    assert relative_improvement(8.0, 10.0) == pytest.approx(0.2)


@pytest.mark.parametrize("champion_fid", ["nan", 0.0, -5.0, "inf", None])
def test_a_broken_champion_is_replaced_and_the_reason_says_why(champion_fid: float | str | None) -> None:
    champion = candidate(fid=champion_fid, pair="old", **{"metric.num_samples": "2000"})
    decision = decide_promotion(candidate(fid=59.0, pair="new", version="2"), champion, REGISTRY)
    assert decision.promote
    assert decision.failed == []
    assert decision.checks[-1].name == "broken_champion"
    assert decision.reasons[-1].startswith(
        "pass broken_champion: the champion decoder v1 + encoder v1 has fid "
        f"{'missing' if champion_fid is None else format(float(champion_fid), '.6g')}, not a FID"
    )
    assert decision.compared["relative_improvement"] is None


def test_a_broken_champion_is_not_replaced_by_a_broken_challenger() -> None:
    champion = candidate(fid="nan", pair="old")
    decision = decide_promotion(
        candidate(fid=-5.0, accuracy=float("inf"), pair="new", version="2"), champion, REGISTRY
    )
    assert not decision.promote
    assert decision.failed == ["max_fid", "evaluator_accuracy"]
