"""Prefect tasks of tokenizer training: thin wrappers over the plain functions."""

from __future__ import annotations

from prefect import task

from tasks import tracking
from tasks.settings import ArvidConfig
from tasks.train.tokenizer_trainer import (
    TokenizerTrainingSummary,
    register_tokenizer,
    run_tokenizer_training,
)


@task(name="train-tokenizer")
def train_tokenizer_step(config: ArvidConfig) -> TokenizerTrainingSummary:
    """Train on Ray Train (resuming from the latest checkpoint), log the run and the model to MLflow."""
    return run_tokenizer_training(config)


@task(name="register-tokenizer")
def register_tokenizer_step(
    summary: TokenizerTrainingSummary, config: ArvidConfig
) -> TokenizerTrainingSummary:
    """Register the logged tokenizer as arvid-tokenizer, tagged with its lineage, under the alias."""
    tracking.setup_tracking(config.tracking)
    return register_tokenizer(summary, config.tokenizer_training.register_alias)
