"""Tiny registered generators with metrics, configs pointing at a test store, and a race helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient

from models.generator.persist import save_generator
from models.generator.transformer import Generator, GeneratorConfig
from tasks import registry
from tasks.config import load_config
from tasks.promote.config import GateConfig, LockConfig, PromoteConfig
from tasks.promote.metrics import set_version_metrics
from tasks.settings import ArvidConfig
from tasks.tracking import TrackingConfig, tracked_run

NAME = registry.GENERATOR_MODEL


def register_generator(
    tracking: TrackingConfig, root: Path, metrics: dict[str, float] | None = None
) -> str:
    """Save a tiny generator, log it as a run's model, register a new arvid-generator version."""
    torch.manual_seed(len(list(root.glob("generator-*"))))
    directory = root / f"generator-{len(list(root.glob('generator-*')))}"
    save_generator(
        Generator(GeneratorConfig(vocab_size=16, num_classes=2, n_layer=1, n_head=2, n_embd=16)),
        directory,
    )
    with tracked_run(tracking, "pretrain-test") as run:
        uri = registry.log_model_dir(directory, "model", "generator")
    version = registry.register(uri, NAME, run.info.run_id, {}, alias=None)
    if metrics:
        set_version_metrics(NAME, version, metrics)
    return version


def make_config(
    tracking: TrackingConfig,
    gates: list[GateConfig] | None = None,
    candidate: str | None = None,
    lock: LockConfig | None = None,
) -> ArvidConfig:
    """The demo config pointed at `tracking`, with these gates (default: the config's defaults)."""
    config = load_config(ArvidConfig)
    config.tracking = tracking
    promote = PromoteConfig(candidate=candidate, lock=lock or LockConfig(timeout_s=120))
    config.promote = promote if gates is None else promote.model_copy(update={"gates": gates})
    return config


def aliases() -> dict[str, str]:
    """alias -> version of arvid-generator now."""
    model = MlflowClient().get_registered_model(NAME)
    return {alias: str(version) for alias, version in model.aliases.items()}


def version_tags(version: str) -> dict[str, str]:
    """The tags of one arvid-generator version."""
    return dict(MlflowClient().get_model_version(NAME, version).tags)


def promote_in_process(config_json: str, barrier: Any, results: Any) -> None:
    """Run one promotion in this (spawned) process once every racer is ready; report the outcome."""
    from tasks.promote.run import promote

    config = ArvidConfig.model_validate_json(config_json)
    barrier.wait(timeout=120)
    try:
        results.put(promote(config).model_dump(mode="json"))
    except Exception as exc:  # the parent asserts on it; a traceback alone would be lost
        results.put({"error": repr(exc)})
