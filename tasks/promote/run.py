"""Promotion and rollback of registered model versions through MLflow aliases.

Aliases (MLflow's replacement for stages) carry the state: `champion` is the version in use,
`previous` the champion it replaced, `challenger` the latest candidate that failed its gates.
MLflow keeps no history of champions, so each promoted version records the one it replaced in
its tag `arvid.promotion.replaced`; rollback walks that chain.

- promote: every gate is judged against the candidate's metrics (`arvid.metric.*` tags, see
  tasks.promote.metrics) and the champion's; with no champion yet, thresholds alone decide. Pass:
  `previous` moves to the old champion, then `champion` to the candidate (and `challenger` leaves
  it). Fail: `challenger` moves to the candidate and the reasons become version tags. Either way
  the decision is tagged on the candidate (`arvid.promotion.*`: decision, when, gates, metrics,
  the champion it was judged against, the MLflow run, who invoked it) and logged as an MLflow run
  of its own (params: the gates; metrics: the values).
- rollback: `champion` goes back to `previous`; the rolled-back version is tagged
  `arvid.promotion.rolled_back_*`; `previous` then points at the version the restored champion
  had replaced (its `arvid.promotion.replaced` tag), or is removed when there is none, it is the
  version just rolled back, or it no longer exists. Rolling back twice walks two steps back.

The read-decide-write section runs under a lock (tasks.promote.lock), so two promotions at once
act as if one ran after the other. Write order is chosen so that a crash half-way leaves
`previous` equal to `champion` (visibly unfinished), never a `previous` that lies.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from tasks import registry, storage, tracking
from tasks.promote.gates import GateOutcome, evaluate_gates
from tasks.promote.lock import HeldLock, hold_lock
from tasks.promote.metrics import read_version_metrics
from tasks.settings import ArvidConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"
TAG = "arvid.promotion."
REPLACED_TAG = TAG + "replaced"
REASON_TAG = TAG + "reason."


class PromotionSummary(BaseModel):
    """What a promotion or rollback decided and where the aliases point afterwards."""

    action: Literal["promote", "rollback"]
    model_name: str
    decision: Literal["promoted", "rejected", "already-champion", "rolled-back"]
    candidate_version: str  # promote: the candidate; rollback: the version rolled back
    champion_before: str | None
    champion: str | None
    previous: str | None
    challenger: str | None
    gates: list[GateOutcome] = []
    reasons: list[str] = []
    decided_at: str
    invoked_by: str
    mlflow_run_id: str | None
    lock: str

    def line(self) -> str:
        """The one-line human summary."""
        name, v = self.model_name, self.candidate_version
        run = f" (MLflow run {self.mlflow_run_id})" if self.mlflow_run_id else ""
        gates = "; ".join(g.line() for g in self.gates)
        gates = f" [{gates}]" if gates else ""
        if self.decision == "rolled-back":
            previous = f"v{self.previous}" if self.previous else "none"
            return (
                f"rollback {name}: champion v{v} -> v{self.champion}, previous now {previous}{run}"
            )
        if self.decision == "already-champion":
            return f"promote {name} v{v}: already the champion, nothing changed"
        if self.decision == "promoted":
            previous = f", previous v{self.previous}" if self.previous else " (first champion)"
            return f"promote {name} v{v}: promoted — champion v{v}{previous}{gates}{run}"
        stays = f"champion stays v{self.champion}" if self.champion else "no champion yet"
        return f"promote {name} v{v}: rejected — challenger v{v}, {stays}{gates}{run}"


def lock_uri(config: ArvidConfig) -> str:
    """Where promotion's lock lives: promote.lock.root, else beside the sqlite tracking database."""
    name = f"promote-{config.promote.model_name}.lock"
    if config.promote.lock.root is not None:
        return storage.join(config.promote.lock.root, name)
    prefix = "sqlite:///"
    if not config.tracking.uri.startswith(prefix):
        raise ValueError(
            f"tracking.uri {config.tracking.uri!r} is not a sqlite file, so promotion has no "
            "natural place for its lock — set promote.lock.root to an s3:// prefix (or a folder) "
            "that every machine promoting to this registry shares"
        )
    database = Path(config.tracking.uri[len(prefix) :]).resolve()
    return str(database.parent / f"{database.name}.{name}")


def _invoker() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in (client.get_registered_model(name).aliases or {}).items()}


def _candidate_version(config: ArvidConfig) -> str:
    """Pin promote.candidate (default: the newest version) to a version number of the model."""
    name = config.promote.model_name
    reference = config.promote.candidate or f"models:/{name}/latest"
    prefix = f"models:/{name}"
    if reference.rstrip("/") != prefix and not reference.startswith((prefix + "/", prefix + "@")):
        raise ValueError(
            f"promote.candidate {reference!r}: give a registered version of {name}, "
            f"models:/{name}/<N> or models:/{name}@<alias>"
        )
    pinned = registry.pin_reference(reference)
    assert pinned.version is not None  # a models:/ reference always pins to a version
    return pinned.version


def _gate_params(config: ArvidConfig, candidate: str, champion: str | None) -> dict[str, object]:
    gates = {
        f"gate{i}": gate.model_dump(mode="json") for i, gate in enumerate(config.promote.gates)
    }
    return {
        "model_name": config.promote.model_name,
        "candidate_version": candidate,
        "champion_before": champion or "none",
        "gates": "; ".join(gate.describe() for gate in config.promote.gates),
        **gates,
    }


def _decision_tags(summary: PromotionSummary, config: ArvidConfig, run_id: str) -> dict[str, str]:
    metrics = {
        g.gate.metric: {"candidate": g.candidate_value, "champion": g.champion_value}
        for g in summary.gates
    }
    tags = {
        TAG + "decision": summary.decision,
        TAG + "decided_at": summary.decided_at,
        TAG + "champion_before": summary.champion_before or "none",
        TAG + "gates": json.dumps([g.model_dump(mode="json") for g in config.promote.gates]),
        TAG + "metrics": json.dumps(metrics, sort_keys=True),
        TAG + "run_id": run_id,
        TAG + "invoked_by": summary.invoked_by,
        TAG + "reasons": "; ".join(summary.reasons),
    }
    if summary.decision == "promoted" and summary.champion_before is not None:
        tags[REPLACED_TAG] = summary.champion_before
    for outcome in summary.gates:
        if not outcome.passed:
            tags[REASON_TAG + outcome.gate.metric] = "; ".join(outcome.reasons)
    return tags


def _write_decision(
    client: MlflowClient, held: HeldLock, summary: PromotionSummary, tags: dict[str, str]
) -> None:
    name, candidate = summary.model_name, summary.candidate_version
    held.verify()  # the last moment to find out the lock was lost, before anything is written
    old = client.get_model_version(name, candidate).tags
    for key in old:  # reasons of an earlier decision must not linger beside this one
        if key.startswith(REASON_TAG) or (key == REPLACED_TAG and REPLACED_TAG not in tags):
            client.delete_model_version_tag(name, candidate, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate, key, value)
    if summary.decision == "rejected":
        client.set_registered_model_alias(name, CHALLENGER, candidate)
        return
    # previous before champion: a crash between the two leaves previous == champion, not a lie.
    if summary.champion_before is not None:
        client.set_registered_model_alias(name, PREVIOUS, summary.champion_before)
    client.set_registered_model_alias(name, CHAMPION, candidate)
    if summary.challenger is None and _aliases(client, name).get(CHALLENGER) == candidate:
        client.delete_registered_model_alias(name, CHALLENGER)


def _judge(
    config: ArvidConfig, candidate: str, aliases: dict[str, str], invoked_by: str, uri: str
) -> PromotionSummary:
    """The decision on `candidate` given the aliases now (nothing written yet)."""
    name = config.promote.model_name
    champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    base = PromotionSummary(
        action="promote",
        model_name=name,
        decision="already-champion",
        candidate_version=candidate,
        champion_before=champion,
        champion=champion,
        previous=aliases.get(PREVIOUS),
        challenger=challenger,
        decided_at=_now(),
        invoked_by=invoked_by,
        mlflow_run_id=None,
        lock=uri,
    )
    if champion == candidate:
        return base
    outcomes = evaluate_gates(
        config.promote.gates,
        read_version_metrics(name, candidate),
        read_version_metrics(name, champion) if champion is not None else None,
        f"{name} v{candidate}",
        f"v{champion}" if champion is not None else None,
    )
    reasons = [f"{o.gate.metric}: {r}" for o in outcomes for r in o.reasons]
    if reasons:
        update = {"decision": "rejected", "challenger": candidate}
    else:
        update = {
            "decision": "promoted",
            "champion": candidate,
            "previous": champion or base.previous,
            "challenger": None if challenger == candidate else challenger,
        }
    return base.model_copy(update={**update, "gates": outcomes, "reasons": reasons})


def promote(config: ArvidConfig, invoked_by: str | None = None) -> PromotionSummary:
    """Judge promote.candidate against the gates and the champion, and move the aliases."""
    from mlflow import MlflowClient

    uri = lock_uri(config)  # first: a config without a lock place fails before any work
    tracking.setup_tracking(config.tracking)
    client = MlflowClient()
    name = config.promote.model_name
    lock = config.promote.lock
    with hold_lock(uri, lock.timeout_s, lock.stale_after_s, f"promote {name}") as held:
        candidate = _candidate_version(config)
        aliases = _aliases(client, name)
        summary = _judge(config, candidate, aliases, invoked_by or _invoker(), uri)
        if summary.decision == "already-champion":
            return summary
        tags = {"arvid.step": "promote", TAG + "decision": summary.decision}
        params = _gate_params(config, candidate, summary.champion_before)
        run_name = f"promote-{name}-v{candidate}"
        with tracking.tracked_run(config.tracking, run_name, params, tags) as run:
            values = {f"candidate.{g.gate.metric}": g.candidate_value for g in summary.gates}
            values |= {f"champion.{g.gate.metric}": g.champion_value for g in summary.gates}
            numbers = {k: v for k, v in values.items() if v is not None}
            tracking.log_metrics({**numbers, "passed": float(summary.decision == "promoted")})
            summary = summary.model_copy(update={"mlflow_run_id": run.info.run_id})
            _write_decision(client, held, summary, _decision_tags(summary, config, run.info.run_id))
    return summary


def _restorable(
    client: MlflowClient, name: str, version: str | None, rolled_back: str
) -> str | None:
    """`version` when it still exists and is not the version being rolled back, else None."""
    from mlflow.exceptions import MlflowException

    if version is None or version == rolled_back:
        return None
    try:
        client.get_model_version(name, version)
    except MlflowException:
        return None  # deleted since: nothing to point previous at
    return version


def rollback(config: ArvidConfig, invoked_by: str | None = None) -> PromotionSummary:
    """Move `champion` back to `previous`; `previous` steps one further back (see the module)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = lock_uri(config)
    tracking.setup_tracking(config.tracking)
    client = MlflowClient()
    name = config.promote.model_name
    lock = config.promote.lock
    with hold_lock(uri, lock.timeout_s, lock.stale_after_s, f"rollback {name}") as held:
        try:
            aliases = _aliases(client, name)
        except MlflowException as exc:
            raise FileNotFoundError(
                f"registered model {name!r} not found — check promote.model_name and tracking.uri"
            ) from exc
        champion, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
        if previous is None or previous == champion:
            raise ValueError(
                f"{name}: no 'previous' version to roll back to (champion is "
                f"{'v' + champion if champion else 'unset'}) — promote a version instead, e.g. "
                f"arvid promote --candidate models:/{name}/<N>"
            )
        replaced = client.get_model_version(name, previous).tags.get(REPLACED_TAG)
        next_previous = _restorable(client, name, replaced, champion or "")
        summary = PromotionSummary(
            action="rollback",
            model_name=name,
            decision="rolled-back",
            candidate_version=champion or "none",
            champion_before=champion,
            champion=previous,
            previous=next_previous,
            challenger=aliases.get(CHALLENGER),
            decided_at=_now(),
            invoked_by=invoked_by or _invoker(),
            mlflow_run_id=None,
            lock=uri,
        )
        tags = {"arvid.step": "rollback", TAG + "decision": "rolled-back"}
        params = {"model_name": name, "rolled_back": champion or "none", "restored": previous}
        with tracking.tracked_run(
            config.tracking, f"rollback-{name}-v{previous}", params, tags
        ) as run:
            held.verify()
            summary = summary.model_copy(update={"mlflow_run_id": run.info.run_id})
            if champion is not None:
                for key, value in {
                    "rolled_back_at": summary.decided_at,
                    "rolled_back_to": previous,
                    "rolled_back_run_id": run.info.run_id,
                    "rolled_back_by": summary.invoked_by,
                }.items():
                    client.set_model_version_tag(name, champion, TAG + key, value)
            client.set_model_version_tag(name, previous, TAG + "restored_at", summary.decided_at)
            # champion first: a crash before previous moves leaves previous == champion.
            client.set_registered_model_alias(name, CHAMPION, previous)
            if next_previous is None:
                client.delete_registered_model_alias(name, PREVIOUS)
            else:
                client.set_registered_model_alias(name, PREVIOUS, next_previous)
    return summary
