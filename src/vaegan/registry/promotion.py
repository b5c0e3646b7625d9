"""Promote the challenger: run the gate (`vaegan.registry.gate`) on it against the champion and move
`champion` on both models together when it passes, under the registry lock; record the decision as
`promotion.*` tags on the challenger's versions and as a run in `<tracking.experiment>-promotions`."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from vaegan.config import Config, RegistryConfig
from vaegan.errors import RegistryError
from vaegan.registry.client import (
    CHALLENGER,
    CHAMPION,
    alias_candidate,
    check_alias_pair,
    connect_registry,
    experiment_id,
    mlflow_errors,
    pair_text,
    versions_candidate,
)
from vaegan.registry.gate import Candidate, GateDecision, decide_promotion
from vaegan.registry.lock import registry_lock
from vaegan.tracking.store import log_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict on a challenger and what `promote_challenger` did with it."""

    promoted: bool
    reasons: list[str]
    challenger: dict[str, str]  # role -> version
    previous_champion: dict[str, str] | None  # role -> version; None when there was none
    metrics: dict[str, float | None]  # the numbers the gate compared
    pair_id: str | None
    dry_run: bool = False
    record_run_id: str | None = None  # the MLflow run that records the decision

    def summary(self) -> str:
        """The decision and its reasons, as `vaegan promote` prints them."""
        versions = f"decoder v{self.challenger['decoder']}, encoder v{self.challenger['encoder']}"
        if self.promoted:
            verdict = f"would promote {versions}" if self.dry_run else f"promoted {versions} to champion"
        else:
            verdict = f"{versions} not promoted"
        before = (
            f"decoder v{self.previous_champion['decoder']}, encoder v{self.previous_champion['encoder']}"
            if self.previous_champion
            else "none"
        )
        prefix = "dry run, nothing changed: " if self.dry_run else ""
        lines = [
            f"{prefix}{verdict} (previous champion: {before})",
            *(f"  {reason}" for reason in self.reasons),
        ]
        if self.record_run_id:
            lines.append(f"  recorded in MLflow run {self.record_run_id}")
        return "\n".join(lines)


def _move_champion(
    client: MlflowClient, registry: RegistryConfig, challenger: Candidate, champion: Candidate | None
) -> None:
    """Point `champion` at the challenger on both models; undo the first move if the second fails."""
    client.set_registered_model_alias(registry.decoder_name, CHAMPION, challenger.decoder_version)
    try:
        client.set_registered_model_alias(registry.encoder_name, CHAMPION, challenger.encoder_version)
    except Exception:
        if champion is not None:
            client.set_registered_model_alias(registry.decoder_name, CHAMPION, champion.decoder_version)
        else:
            client.delete_registered_model_alias(registry.decoder_name, CHAMPION)
        raise
    check_alias_pair(client, registry, CHAMPION, challenger.pair_id)


def _record(
    client: MlflowClient,
    config: Config,
    decision: PromotionDecision,
    gate: GateDecision,
    champion: Candidate | None,
) -> str:
    """Log the decision as an MLflow run (experiment `<tracking.experiment>-promotions`) and as
    `promotion.*` tags on the challenger's versions; return the run id."""
    registry = config.registry
    now = datetime.now(UTC)
    verdict = "promoted" if decision.promoted else "rejected"
    record_experiment = experiment_id(client, config.tracking, f"{config.tracking.experiment}-promotions")
    run = client.create_run(
        record_experiment,
        run_name=f"promote-{verdict}",
        tags={
            "vaegan.stage": "promote",
            "promotion.decision": verdict,
            "promotion.reasons": "\n".join(decision.reasons),
            "promotion.failed_checks": ",".join(gate.failed) or "none",
            "challenger.decoder_version": decision.challenger["decoder"],
            "challenger.encoder_version": decision.challenger["encoder"],
            "challenger.pair_id": str(decision.pair_id),
            "champion_before": champion.label() if champion else "none",
            "champion_before.pair_id": str(champion.pair_id) if champion else "none",
        },
    )
    run_id = run.info.run_id
    log_metrics(client, run_id, decision.metrics)
    client.log_batch(
        run_id,
        params=[
            Param(f"registry.{key}", str(getattr(registry, key)))
            for key in ("min_improvement", "max_fid", "min_evaluator_accuracy")
        ],
    )
    client.log_text(run_id, json.dumps(asdict(decision), indent=2, default=str), "decision.json")
    client.set_terminated(run_id)
    if "new" in gate.failed:  # the challenger is the champion: keep the tags of its promotion
        return run_id
    tags = {
        "promotion.decision": verdict,
        "promotion.reasons": "\n".join(decision.reasons),
        "promotion.timestamp": now.isoformat(timespec="seconds"),
        "promotion.run_id": run_id,
        "promotion.champion_before": champion.label() if champion else "none",
    }
    for name, version in (
        (registry.decoder_name, decision.challenger["decoder"]),
        (registry.encoder_name, decision.challenger["encoder"]),
    ):
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    return run_id


def promote_challenger(
    *, config: Config, dry_run: bool = False, versions: tuple[str, str] | None = None
) -> PromotionDecision:
    """Run the gate on the challenger against the champion; move `champion` on both models when it
    passes. `versions` = (decoder, encoder) judges that registration instead of the `challenger`
    alias. The read-decide-write section holds the registry lock; `dry_run` only reads and decides.
    """
    registry = config.registry
    client, uri = connect_registry(config.tracking)
    with mlflow_errors("promote"), registry_lock(uri, shared=dry_run):
        challenger = (
            versions_candidate(client, registry, versions)
            if versions is not None
            else alias_candidate(client, registry, CHALLENGER)
        )
        if challenger is None:
            raise RegistryError(
                f"no {CHALLENGER!r} alias on {registry.decoder_name} / {registry.encoder_name}: "
                "run `vaegan register` first"
            )
        champion = alias_candidate(client, registry, CHAMPION)
        if champion is not None and champion.pair_id is None:
            raise RegistryError(
                f"the champion aliases point at {pair_text(champion)}, which are not one "
                "registration; fix the aliases by hand before promoting"
            )
        gate = decide_promotion(challenger, champion, registry)
        decision = PromotionDecision(
            promoted=gate.promote,
            reasons=gate.reasons,
            challenger={"decoder": challenger.decoder_version, "encoder": challenger.encoder_version},
            previous_champion=(
                {"decoder": champion.decoder_version, "encoder": champion.encoder_version}
                if champion
                else None
            ),
            metrics=dict(gate.compared),
            pair_id=challenger.pair_id,
            dry_run=dry_run,
        )
        if dry_run:
            return decision
        if gate.promote:
            _move_champion(client, registry, challenger, champion)
        run_id = _record(client, config, decision, gate, champion)
    log.info("%s (recorded in run %s)", "promoted" if decision.promoted else "not promoted", run_id)
    return dataclasses.replace(decision, record_run_id=run_id)
