"""Prefect tasks of tokenization: thin wrappers over the plain functions."""

from __future__ import annotations

from prefect import task

from tasks.settings import ArvidConfig
from tasks.tokenize.report import TokenizeSummary
from tasks.tokenize.run import tokenize_dataset


@task(name="tokenize-dataset")
def tokenize_step(config: ArvidConfig) -> TokenizeSummary:
    """Tokenize the configured dataset on Ray, publish token shards and manifest, log to MLflow."""
    return tokenize_dataset(config)
