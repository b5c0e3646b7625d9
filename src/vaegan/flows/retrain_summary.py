"""The `retrain` flow's report: which stages ran, the new model's metrics next to the champion's,
the promotion decision with its reasons, and where to look (MLflow run and model versions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vaegan.dvc_commands import StageOutcome
    from vaegan.registry.promotion import PromotionDecision
    from vaegan.registry.registration import Registration

# The metrics the summary table shows, and which direction is better.
SUMMARY_METRICS = (
    ("fid", "lower"),
    ("fid_recon", "lower"),
    ("precision", "higher"),
    ("recall", "higher"),
    ("psnr", "higher"),
    ("ssim", "higher"),
    ("sample_class_entropy", "higher"),
)


@dataclass
class RetrainSummary:
    params_changed: dict[str, Any]
    stages: list[StageOutcome]
    metrics: dict[str, Any]  # metrics/eval.json of this run
    baseline: dict[str, Any] | None  # metrics/baseline/eval.json
    registration: Registration | None
    decision: PromotionDecision | None
    tracking_uri: str
    pushed_to: str | None = None
    champion_metrics: dict[str, Any] = field(default_factory=dict)  # tags metric.* of the old champion
    commit: str = "unknown"  # the git commit the run's code and params.yaml came from
    run_branch: str | None = None  # team mode: the branch that holds the run's params and dvc.lock

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly digest (the flow's return value)."""
        return {
            "params_changed": self.params_changed,
            "stages": {o.stage: {"ran": o.ran, "seconds": round(o.seconds, 1)} for o in self.stages},
            "fid": self.metrics.get("fid"),
            "registered": self.registration.model_uris if self.registration else None,
            "promoted": self.decision.promoted if self.decision else None,
            "reasons": self.decision.reasons if self.decision else [],
            "pushed_to": self.pushed_to,
            "commit": self.commit,
            "run_branch": self.run_branch,
        }


def mlflow_link(tracking_uri: str, path: str) -> str | None:
    """A browser link into the MLflow UI when the tracking URI is a server, else None."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/{path}"


def _number(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return "–"


def _where(summary: RetrainSummary) -> list[str]:
    lines = ["", "## Where to look", ""]
    uri = summary.tracking_uri
    registration = summary.registration
    if registration is not None:
        for role, model_uri in registration.model_uris.items():
            name, version = model_uri.removeprefix("models:/").rsplit("/", 1)
            link = mlflow_link(uri, f"models/{name}/versions/{version}")
            lines.append(f"- {role}: `{model_uri}`" + (f" ([MLflow]({link}))" if link else ""))
        for label, run_id in (
            ("training run", registration.training_run_id),
            ("register run", registration.run_id),
        ):
            link = mlflow_link(uri, f"runs/{run_id}")
            lines.append(f"- {label}: `{run_id}`" + (f" ([MLflow]({link}))" if link else ""))
    if not uri.startswith(("http://", "https://")):
        lines.append(f"- MLflow UI: `mlflow ui --backend-store-uri {uri}` (or `make serve`)")
    lines.append(f"- code: git commit `{summary.commit}`")
    if summary.run_branch:
        lines.append(
            f"- DVC: outputs pushed to remote `{summary.pushed_to}`; params.yaml, dvc.lock and metrics in "
            f"branch `{summary.run_branch}` of the team's git remote (`git checkout {summary.run_branch} && "
            "dvc pull`)"
        )
    elif summary.pushed_to:
        lines.append(
            f"- DVC: artifacts pushed to remote `{summary.pushed_to}`; commit params.yaml and dvc.lock"
        )
    return lines


def summary_markdown(summary: RetrainSummary) -> str:
    """The Prefect markdown artifact `retrain-summary`."""
    decision = summary.decision
    if decision is None:
        headline = "registered, promotion skipped"
    elif decision.promoted:
        headline = "new champion" + (" (dry run)" if decision.dry_run else "")
    else:
        headline = "champion kept"
    lines = [f"# Retrain: {headline}", "", "| stage | status | seconds |", "| --- | --- | ---: |"]
    for outcome in summary.stages:
        lines.append(f"| {outcome.stage} | {'ran' if outcome.ran else 'cached'} | {outcome.seconds:.1f} |")
    if summary.params_changed:
        changed = ", ".join(f"`{key}={value}`" for key, value in summary.params_changed.items())
        lines += ["", f"Params changed for this run: {changed}"]
    lines += [
        "",
        "## Metrics",
        "",
        "| metric | this run | champion | baseline (vae) | better |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    baseline = summary.baseline or {}
    for name, better in SUMMARY_METRICS:
        lines.append(
            f"| {name} | {_number(summary.metrics.get(name))} | "
            f"{_number(summary.champion_metrics.get(name))} | {_number(baseline.get(name))} | {better} |"
        )
    if decision is not None:
        lines += ["", "## Promotion decision", ""]
        lines += [f"- {reason}" for reason in decision.reasons]
    return "\n".join(lines + _where(summary)) + "\n"
