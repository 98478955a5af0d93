"""What a pipeline re-run may skip: outputs that exist already for the same inputs and config."""

from __future__ import annotations

from tasks import registry, storage, tracking
from tasks.config import config_hash
from tasks.data.datasets import resolve_dataset
from tasks.settings import ArvidConfig
from tasks.train.tokenizer_trainer import dataset_reference


def trained_tokenizer(config: ArvidConfig) -> str | None:
    """The tokenizer version this tokenizer_training config registered on the current dataset
    version before, or None (then it has to be trained)."""
    tracking.setup_tracking(config.tracking)
    dataset = resolve_dataset(storage.absolute(dataset_reference(config)))
    return registry.find_version(
        registry.TOKENIZER_MODEL,
        {
            "arvid.dataset_version": dataset.version,
            "arvid.config_hash": config_hash(config.tokenizer_training),
        },
    )
