"""Flow `arvid-ingest`: raw videos -> versioned webdataset clip shards + manifest + quarantine."""

from __future__ import annotations

from prefect import flow

from tasks import storage
from tasks.ingest.run import IngestSummary
from tasks.ingest.steps import ingest_step
from tasks.settings import ArvidConfig


@flow(name="arvid-ingest", validate_parameters=True)
def ingest_flow(config: ArvidConfig) -> IngestSummary:
    """Ingest the configured source into a dataset version and record the run in MLflow."""
    storage.configure_storage(config.storage)
    return ingest_step(config)
