"""The verdict of a rebuild against its record, and the table that explains it.

- `identical`: the weights and both ONNX graphs are the registered bytes.
- `equivalent`: the bytes differ but FID, precision and recall are within the stated tolerance of
  the registered values; the reason says why the bytes may differ (another CPU type, torch build,
  thread count, a GPU run).
- `different` (exit 1): an input (training code, a param) is not what trained the model, or a
  metric is outside the tolerance; the reason names the first thing that differed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vaegan.registry.gate import parse_float
from vaegan.reproduction.environment import Prediction

IDENTICAL, EQUIVALENT, DIFFERENT = "identical", "equivalent", "different"
UNCHECKED = "not rebuilt"  # --check-only: inputs compared and the verdict predicted, nothing trained
EXIT_CODES = {IDENTICAL: 0, EQUIVALENT: 0, UNCHECKED: 0, DIFFERENT: 1}
# Params that choose where things run or are logged, not what is computed: a change there is an
# environment difference (the `env.device` record), not a different recipe.
WHERE_PARAMS = ("tracking.", "registry.", "train.device", "evaluate.device")


@dataclass(frozen=True)
class Tolerance:
    """How far an `equivalent` rebuild's metrics may be from the registered ones. Another CPU type
    takes another trajectory, much as another training seed does, so the defaults sit just above
    the largest gap between three seeds of the quick profile: FID 11.8-13.2 (12%), precision
    0.812-0.832, recall 0.747-0.775 (docs/reproducibility.md)."""

    fid_relative: float = 0.15
    precision_recall: float = 0.04


@dataclass(frozen=True)
class Comparison:
    """One recorded value against the rebuild's."""

    what: str
    recorded: str
    rebuilt: str
    same: bool
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    prediction: Prediction
    inputs: tuple[Comparison, ...]
    outputs: tuple[Comparison, ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def _flat(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in params.items()
        if isinstance(values, Mapping)
        for key, value in values.items()
    }


def param_comparisons(recorded: Mapping[str, Any], rebuild: Mapping[str, Any]) -> list[Comparison]:
    """Every param (`section.key`) whose value differs between the recorded config and the
    rebuild's, except those that only say where things run (`WHERE_PARAMS`)."""
    old, new = _flat(recorded), _flat(rebuild)
    return [
        Comparison(f"param {key}", repr(old.get(key)), repr(new.get(key)), False)
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not key.startswith(WHERE_PARAMS)
    ]


def _short(digest: str) -> str:
    return digest[:12] if len(digest) == 64 else digest


def digest_comparison(what: str, recorded: str, rebuilt: str) -> Comparison:
    return Comparison(what, _short(recorded), _short(rebuilt), recorded == rebuilt)


def metric_comparisons(
    tags: Mapping[str, str], metrics: Mapping[str, Any], tolerance: Tolerance
) -> list[Comparison]:
    """FID (relative), precision and recall (absolute) of the rebuild against the `metric.*` tags."""
    rows = []
    for name, relative, allowed in (
        ("fid", True, tolerance.fid_relative),
        ("precision", False, tolerance.precision_recall),
        ("recall", False, tolerance.precision_recall),
    ):
        old, new = parse_float(tags.get(f"metric.{name}")), parse_float(str(metrics.get(name)))
        if old is None or new is None:
            rows.append(Comparison(name, str(old), str(new), False, "missing"))
            continue
        gap = abs(new - old) / abs(old) if relative and old else abs(new - old)
        note = f"{gap:.1%} (<= {allowed:.0%})" if relative else f"{gap:.4f} (<= {allowed:g})"
        rows.append(Comparison(name, f"{old:.6g}", f"{new:.6g}", new == old or gap <= allowed, note))
    return rows


def decide(
    prediction: Prediction,
    inputs: list[Comparison],
    bitwise: list[Comparison] | None = None,
    metrics: list[Comparison] | None = None,
) -> Verdict:
    """The verdict from the input comparisons (code, params, data), the bitwise ones (weights,
    graphs) and the metric ones; without a rebuild (`bitwise` None) only a differing input decides."""
    changed = [row for row in inputs if not row.same]
    if changed:
        first = changed[0]
        reason = (
            f"{first.what} differs from what trained the model: "
            f"recorded {first.recorded}, rebuild {first.rebuilt}"
        )
        return Verdict(DIFFERENT, reason, prediction, tuple(inputs))
    if bitwise is None:
        return Verdict(
            UNCHECKED, f"not rebuilt (--check-only); {prediction.reason}", prediction, tuple(inputs)
        )
    outputs = tuple(bitwise + (metrics or []))
    if all(row.same for row in bitwise):
        return Verdict(
            IDENTICAL,
            "weights and both ONNX graphs are the registered bytes",
            prediction,
            tuple(inputs),
            outputs,
        )
    first_bytes = next(row.what for row in bitwise if not row.same)
    outside = [row for row in metrics or [] if not row.same]
    if outside:
        row = outside[0]
        reason = (
            f"{row.what} {row.rebuilt} is outside the tolerance of the registered {row.recorded} ({row.note})"
        )
        return Verdict(DIFFERENT, reason, prediction, tuple(inputs), outputs)
    why = (
        prediction.reason.split(":")[0]
        if prediction.verdict == EQUIVALENT
        else "the recorded environment matches, so this is nondeterminism worth reporting"
    )
    reason = f"{first_bytes} differ, metrics within tolerance; {why}"
    return Verdict(EQUIVALENT, reason, prediction, tuple(inputs), outputs)


def _table(rows: tuple[Comparison, ...]) -> list[str]:
    lines = ["| | recorded | rebuilt | same | |", "|---|---|---|---|---|"]
    for row in rows:
        same = "yes" if row.same else "**no**"
        lines.append(f"| {row.what} | `{row.recorded}` | `{row.rebuilt}` | {same} | {row.note} |")
    return lines


def verdict_markdown(verdict: Verdict, label: str, commit: str) -> str:
    """The verdict, the environment prediction and every comparison, as markdown."""
    lines = [
        f"# reproduce {label}: **{verdict.verdict}**",
        "",
        verdict.reason,
        "",
        f"Commit `{commit}`. Environment: {verdict.prediction.reason}.",
    ]
    if verdict.prediction.differences:
        lines += ["", "| environment | recorded | here |", "|---|---|---|"]
        lines += [f"| {d.field} | `{d.recorded}` | `{d.here}` |" for d in verdict.prediction.differences]
    lines += ["", "## Inputs", "", *_table(verdict.inputs)]
    if verdict.outputs:
        lines += ["", "## Rebuilt outputs", "", *_table(verdict.outputs)]
    return "\n".join(lines) + "\n"
