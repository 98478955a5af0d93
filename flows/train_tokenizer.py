"""Flow `arvid-train-tokenizer`: an ingested dataset -> a trained, registered video tokenizer."""

from __future__ import annotations

from prefect import flow

from tasks import storage
from tasks.settings import ArvidConfig
from tasks.train.steps import register_tokenizer_step, train_tokenizer_step
from tasks.train.tokenizer_trainer import TokenizerTrainingSummary


@flow(name="arvid-train-tokenizer", validate_parameters=True)
def train_tokenizer_flow(config: ArvidConfig) -> TokenizerTrainingSummary:
    """Train the tokenizer on Ray from the latest checkpoint, then register it in MLflow."""
    storage.configure_storage(config.storage)
    trained = train_tokenizer_step(config)
    return register_tokenizer_step(trained, config)
