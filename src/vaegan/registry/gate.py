"""The promotion gate: may a registered challenger replace the champion? Pure logic, no I/O.

A *registration* is one encoder version and one decoder version registered together; both carry
the same tags (`pair_id`, `parity_passed`, `metric.<name>` from metrics/eval.json, ...). The gate
reads only those tags and the `registry` params, and runs every check, so the decision lists all
the reasons at once:

- pair: encoder and decoder come from the same registration (same non-empty `pair_id`).
- parity: the export's ONNX Runtime vs PyTorch parity check passed (`parity_passed` = true).
- max_fid: `fid` is a FID (a positive finite number) below `registry.max_fid`.
- evaluator_accuracy: `evaluator_test_accuracy` is an accuracy (in [0, 1]) and at least
  `registry.min_evaluator_accuracy` (the evaluator whose features and labels the metrics use must
  itself be good).
- With a champion: not already champion; the two FIDs are comparable (same number of samples,
  feature extractor and evaluator file, where both record them: FID is biased by N and its scale
  depends on the features); and the challenger's `fid` is lower than the champion's by at least
  `registry.min_improvement` relative, (champion - challenger) / champion. A champion whose `fid`
  is not a FID (missing, NaN, zero or negative: a broken registration) cannot be compared with:
  any challenger that passes the absolute checks replaces it (`broken_champion`).
- Without a champion, the first registration that passes the absolute checks becomes champion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from vaegan.config import RegistryConfig

# Tags compared to decide whether two FIDs are on the same scale (absent on either side: skipped).
COMPARABILITY_TAGS = ("metric.num_samples", "metric.num_test", "metric.feature_extractor", "evaluator_sha256")


@dataclass(frozen=True)
class Candidate:
    """One registration as the gate sees it: its decoder and encoder versions and their tags."""

    decoder_version: str
    encoder_version: str
    decoder_tags: Mapping[str, str]
    encoder_tags: Mapping[str, str]

    @property
    def pair_id(self) -> str | None:
        """The registration id when both halves agree on it, else None."""
        decoder_pair = self.decoder_tags.get("pair_id")
        return decoder_pair if decoder_pair and decoder_pair == self.encoder_tags.get("pair_id") else None

    def number(self, name: str) -> float | None:
        """Tag `name` of the decoder as a float (None when absent or not a number)."""
        return parse_float(self.decoder_tags.get(name))

    def label(self) -> str:
        return f"decoder v{self.decoder_version} + encoder v{self.encoder_version}"


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    message: str

    def reason(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'} {self.name}: {self.message}"


@dataclass(frozen=True)
class GateDecision:
    """Whether to promote, every check with its outcome, and the numbers compared."""

    promote: bool
    checks: tuple[Check, ...]
    compared: dict[str, float | None]

    @property
    def reasons(self) -> list[str]:
        return [check.reason() for check in self.checks]

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.passed]


def parse_float(text: str | None) -> float | None:
    """A tag value as a float; None when it is absent or not a number."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.6g}"


def is_fid(value: float | None) -> bool:
    """True for a possible FID value: a positive finite number."""
    return value is not None and math.isfinite(value) and value > 0


def is_accuracy(value: float | None) -> bool:
    """True for a possible accuracy: a number in [0, 1]."""
    return value is not None and 0.0 <= value <= 1.0


def absolute_checks(challenger: Candidate, registry: RegistryConfig) -> list[Check]:
    """The checks a registration must pass whatever the champion: pair, parity, max_fid, evaluator."""
    decoder_pair = challenger.decoder_tags.get("pair_id")
    encoder_pair = challenger.encoder_tags.get("pair_id")
    checks = [
        Check(
            "pair",
            challenger.pair_id is not None,
            f"{challenger.label()} share pair_id {decoder_pair}"
            if challenger.pair_id is not None
            else f"{challenger.label()} are not one registration "
            f"(pair_id {decoder_pair or 'missing'} vs {encoder_pair or 'missing'})",
        )
    ]
    parity = [challenger.decoder_tags.get("parity_passed"), challenger.encoder_tags.get("parity_passed")]
    parity_ok = all(value == "true" for value in parity)
    checks.append(
        Check(
            "parity",
            parity_ok,
            "ONNX Runtime parity passed for both graphs"
            if parity_ok
            else f"export parity did not pass (decoder {parity[0] or 'missing'}, "
            f"encoder {parity[1] or 'missing'})",
        )
    )
    checks.append(_max_fid_check(challenger.number("metric.fid"), registry))
    checks.append(_accuracy_check(challenger.number("metric.evaluator_test_accuracy"), registry))
    return checks


def _max_fid_check(fid: float | None, registry: RegistryConfig) -> Check:
    if fid is not None and not is_fid(fid):
        return Check("max_fid", False, f"fid {_fmt(fid)} is not a FID (a positive finite number)")
    fid_ok = fid is not None and is_fid(fid) and fid < registry.max_fid
    return Check(
        "max_fid",
        fid_ok,
        f"fid {_fmt(fid)} {'<' if fid_ok else 'is not below'} registry.max_fid {registry.max_fid:g}",
    )


def _accuracy_check(accuracy: float | None, registry: RegistryConfig) -> Check:
    if accuracy is not None and not is_accuracy(accuracy):
        return Check(
            "evaluator_accuracy",
            False,
            f"evaluator_test_accuracy {_fmt(accuracy)} is not an accuracy (a number in [0, 1])",
        )
    accuracy_ok = accuracy is not None and accuracy >= registry.min_evaluator_accuracy
    return Check(
        "evaluator_accuracy",
        accuracy_ok,
        f"evaluator_test_accuracy {_fmt(accuracy)} "
        f"{'>=' if accuracy_ok else 'is below'} registry.min_evaluator_accuracy "
        f"{registry.min_evaluator_accuracy:g}",
    )


def relative_improvement(challenger_fid: float | None, champion_fid: float | None) -> float | None:
    """(champion - challenger) / champion, or None when it is undefined."""
    if challenger_fid is None or champion_fid is None:
        return None
    if not (math.isfinite(challenger_fid) and math.isfinite(champion_fid)) or champion_fid <= 0:
        return None
    return (champion_fid - challenger_fid) / champion_fid


def champion_checks(challenger: Candidate, champion: Candidate, registry: RegistryConfig) -> list[Check]:
    """The checks against a champion: not the same registration, comparable FIDs, enough improvement."""
    if challenger.pair_id is not None and challenger.pair_id == champion.pair_id:
        return [Check("new", False, f"{challenger.label()} is already the champion")]
    champion_fid = champion.number("metric.fid")
    if not is_fid(champion_fid):
        return [
            Check(
                "broken_champion",
                True,
                f"the champion {champion.label()} has fid {_fmt(champion_fid)}, not a FID (a positive "
                "finite number): it cannot be compared with, and a challenger that passes the absolute "
                "checks replaces it",
            )
        ]
    checks = []
    differ = [
        f"{tag} {champion.decoder_tags[tag]} vs {challenger.decoder_tags[tag]}"
        for tag in COMPARABILITY_TAGS
        if tag in champion.decoder_tags
        and tag in challenger.decoder_tags
        and champion.decoder_tags[tag] != challenger.decoder_tags[tag]
    ]
    checks.append(
        Check(
            "comparable",
            not differ,
            "evaluated like the champion (samples, test images, features, evaluator)"
            if not differ
            else "FID not comparable with the champion's: " + "; ".join(differ),
        )
    )
    fid = challenger.number("metric.fid")
    improvement = relative_improvement(fid, champion_fid)
    improved = improvement is not None and improvement >= registry.min_improvement
    if improvement is None:
        message = f"fid {_fmt(fid)} cannot be compared with the champion's fid {_fmt(champion_fid)}"
    else:
        message = (
            f"fid {_fmt(fid)} vs champion {_fmt(champion_fid)} ({champion.label()}): "
            f"{improvement:+.2%} relative improvement, "
            f"{'>=' if improved else 'below'} registry.min_improvement {registry.min_improvement:.2%}"
        )
    checks.append(Check("improvement", improved, message))
    return checks


def decide_promotion(
    challenger: Candidate, champion: Candidate | None, registry: RegistryConfig
) -> GateDecision:
    """Run every check of the gate on `challenger` against `champion` (None: no champion yet)."""
    checks = absolute_checks(challenger, registry)
    fid = challenger.number("metric.fid")
    compared: dict[str, float | None] = {
        "challenger_fid": fid,
        "challenger_evaluator_test_accuracy": challenger.number("metric.evaluator_test_accuracy"),
        "champion_fid": None,
        "relative_improvement": None,
    }
    if champion is None:
        checks.append(Check("first_champion", True, "no champion yet: the absolute checks decide"))
    else:
        checks.extend(champion_checks(challenger, champion, registry))
        compared["champion_fid"] = champion.number("metric.fid")
        compared["relative_improvement"] = relative_improvement(fid, compared["champion_fid"])
    return GateDecision(
        promote=all(check.passed for check in checks), checks=tuple(checks), compared=compared
    )
