"""Flow `arvid-pipeline`: ingest -> tokenizer -> tokenize per stage -> staged pretraining ->
evaluate -> promote, each step a sub-flow, all under one parent MLflow run.

A step whose outputs exist already for the same inputs and config is skipped and says so: the
sharded-output steps (ingest, tokenize) publish nothing new and report it, a tokenizer or
generator trained by the same config on the same data is found in the registry by its lineage
tags, an evaluation already attached to the version is read back, and a champion stays one. A
failed step is retried by running the pipeline again: what finished is skipped, what was cut
short resumes from its published units or checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.pretrain import pretrain_flow
from flows.promote import promote_flow
from flows.tokenize import tokenize_flow
from flows.train_tokenizer import train_tokenizer_flow
from tasks import registry, storage, tracking
from tasks.pipeline.skips import trained_tokenizer
from tasks.pipeline.summary import PipelineSummary, StepOutcome
from tasks.pretrain.run import stage_tokenize_config, trained_version
from tasks.settings import ArvidConfig

log = logging.getLogger("arvid.pipeline")


class _Steps:
    """Runs steps in order, timing each and recording whether it ran or was skipped."""

    def __init__(self) -> None:
        self.done: list[StepOutcome] = []

    def run(self, name: str, body: Callable[[], tuple[bool, str, Any]]) -> Any:
        started = time.perf_counter()
        log.info("pipeline: %s ...", name)
        skipped, line, result = body()
        outcome = StepOutcome(
            name=name,
            status="skipped" if skipped else "ran",
            line=line,
            seconds=round(time.perf_counter() - started, 2),
        )
        log.info("pipeline: %s %s (%.1f s): %s", name, outcome.status, outcome.seconds, line)
        self.done.append(outcome)
        return result

    def skip(self, name: str, line: str) -> None:
        self.run(name, lambda: (True, line, None))


@flow(name="arvid-pipeline", validate_parameters=True)
def pipeline_flow(config: ArvidConfig) -> PipelineSummary:
    """Run (or skip, where done) every step from raw videos to a promoted generator."""
    from mlflow import MlflowClient

    started = time.perf_counter()
    storage.configure_storage(config.storage)
    experiment = tracking.setup_tracking(config.tracking)
    client = MlflowClient()
    parent = client.create_run(
        experiment,
        run_name=config.pipeline.run_name,
        tags={"arvid.step": "pipeline", "arvid.git_commit": tracking.git_commit()},
    ).info.run_id
    status = "FAILED"
    try:
        with tracking.child_runs_of(parent):
            summary = _run_steps(config, parent, started)
        for step in summary.steps:
            client.log_metric(parent, f"seconds/{step.name}", step.seconds)
            client.set_tag(parent, f"arvid.pipeline.{step.name}", step.status)
        for name, value in summary.metrics.items():
            client.log_metric(parent, name, value)
        status = "FINISHED"
        return summary
    finally:
        client.set_terminated(parent, status)


def _run_steps(config: ArvidConfig, parent: str, started: float) -> PipelineSummary:
    steps = _Steps()

    # 1. Ingest: a re-run over the same inputs publishes nothing new.
    ingested = steps.run(
        "ingest",
        lambda: _ran(ingest_flow(config), lambda s: not s.published_new),
    )
    dataset = f"{storage.absolute(ingested.dataset_root)}@{ingested.version}"
    config = _with(config, {"tokenizer_training.dataset": dataset, "pretrain.dataset": dataset})

    # 2. Tokenizer: the given one, the one this config trained on this data before, or train.
    tokenizer = steps.run("tokenizer", lambda: _tokenizer(config))
    config = _with(config, {"tokenize.tokenizer": tokenizer, "pretrain.tokenizer": tokenizer})

    # 3. Tokens for every stage (pretraining then finds them published).
    for stage in config.pretrain.stages:
        stage_config = stage_tokenize_config(config, stage, dataset, tokenizer)
        steps.run(
            f"tokenize-{stage.name}",
            lambda c=stage_config: _ran(tokenize_flow(c), lambda s: not s.published_new),
        )

    # 4. Staged pretraining, unless this exact training is registered already.
    generator = steps.run("pretrain", lambda: _pretrain(config))
    config = _with(config, {"evaluate.model": generator, "promote.candidate": generator})
    summary = PipelineSummary(
        mlflow_run_id=parent, steps=steps.done, dataset=dataset, tokenizer=tokenizer,
        generator=generator,
    )  # fmt: skip

    # 5. Evaluation: metrics onto the version (read back when already attached).
    if config.pipeline.evaluate:
        evaluated = steps.run(
            "evaluate", lambda: _ran(evaluate_flow(config), lambda s: s.recorded_before)
        )
        summary.metrics = evaluated.metrics
        summary.samples, summary.contact_sheet = _local_artifacts(evaluated)
    else:
        steps.skip("evaluate", "pipeline.evaluate is off")

    # 6. Promotion on the gates.
    if config.pipeline.promote:
        promoted = steps.run(
            "promote",
            lambda: _ran(promote_flow(config), lambda s: s.decision == "already-champion"),
        )
        summary.promotion, summary.champion = promoted.decision, promoted.champion
    else:
        steps.skip("promote", "pipeline.promote is off")
    summary.steps = steps.done
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def _ran(result: Any, was_skipped: Callable[[Any], bool]) -> tuple[bool, str, Any]:
    return was_skipped(result), result.line(), result


def _with(config: ArvidConfig, updates: dict[str, Any]) -> ArvidConfig:
    """A copy of `config` with dotted `section.field` values replaced (validated again)."""
    data = config.model_dump(mode="json")
    for dotted, value in updates.items():
        section, field = dotted.split(".", 1)
        data[section][field] = value
    return ArvidConfig.model_validate(data)


def _tokenizer(config: ArvidConfig) -> tuple[bool, str, str]:
    alias = config.tokenizer_training.register_alias
    if config.pipeline.tokenizer:
        pinned = registry.pin_reference(config.pipeline.tokenizer).pinned
        return True, f"reusing {pinned} (pipeline.tokenizer)", pinned
    version = trained_tokenizer(config)
    if version is not None:
        registry.set_alias(registry.TOKENIZER_MODEL, alias, version)
        pinned = f"models:/{registry.TOKENIZER_MODEL}/{version}"
        return True, f"{pinned} was trained by this config on this data before", pinned
    trained = train_tokenizer_flow(config)
    return False, trained.line(), f"models:/{registry.TOKENIZER_MODEL}/{trained.model_version}"


def _pretrain(config: ArvidConfig) -> tuple[bool, str, str]:
    version = trained_version(config)
    if version is not None:
        registry.set_alias(registry.GENERATOR_MODEL, config.pretrain.register_alias, version)
        pinned = f"models:/{registry.GENERATOR_MODEL}/{version}"
        return True, f"{pinned} was trained by these stages on this data before", pinned
    trained = pretrain_flow(config)
    return False, trained.line(), f"models:/{registry.GENERATOR_MODEL}/{trained.model_version}"


def _local_artifacts(evaluated: Any) -> tuple[list[str], str | None]:
    """Where the evaluation's samples and contact sheet are on disk (file-based artifact stores)."""
    from mlflow import MlflowClient

    if evaluated.mlflow_run_id is None:
        return [], None
    root = MlflowClient().get_run(evaluated.mlflow_run_id).info.artifact_uri
    if not root.startswith(("file:", "/")):
        return [f"{root}/{p}" for p in evaluated.samples], f"{root}/contact_sheet.png"
    local = root.removeprefix("file://").removeprefix("file:")
    sheet = f"{local}/{evaluated.contact_sheet}" if evaluated.contact_sheet else None
    return [f"{local}/{p}" for p in evaluated.samples], sheet
