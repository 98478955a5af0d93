"""Prefect tasks of pretraining: thin wrappers over the plain functions."""

from __future__ import annotations

from prefect import task

from tasks.pretrain.run import PretrainSummary, pretrain
from tasks.settings import ArvidConfig


@task(name="pretrain-generator")
def pretrain_step(config: ArvidConfig) -> PretrainSummary:
    """Run every stage (resuming finished and started ones), log to MLflow, register the model."""
    return pretrain(config)
