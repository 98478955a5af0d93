"""Flow `arvid-promote`: evaluation metrics + gates -> the `champion` alias moves (or rolls back)."""

from __future__ import annotations

from prefect import flow

from tasks import storage
from tasks.promote.run import PromotionSummary
from tasks.promote.steps import promote_step, rollback_step
from tasks.settings import ArvidConfig


@flow(name="arvid-promote", validate_parameters=True)
def promote_flow(config: ArvidConfig, rollback: bool = False) -> PromotionSummary:
    """Promote promote.candidate if it passes every gate; with `rollback`, restore `previous`."""
    storage.configure_storage(config.storage)  # an s3:// lock goes through the storage layer
    return rollback_step(config) if rollback else promote_step(config)
