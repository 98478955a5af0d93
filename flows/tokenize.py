"""Flow `arvid-tokenize`: a dataset version x a tokenizer version x a clip shape -> token shards."""

from __future__ import annotations

from prefect import flow

from tasks import storage
from tasks.settings import ArvidConfig
from tasks.tokenize.report import TokenizeSummary
from tasks.tokenize.steps import tokenize_step


@flow(name="arvid-tokenize", validate_parameters=True)
def tokenize_flow(config: ArvidConfig) -> TokenizeSummary:
    """Tokenize the configured dataset with the configured tokenizer; the MLflow run records the lineage."""
    storage.configure_storage(config.storage)
    return tokenize_step(config)
