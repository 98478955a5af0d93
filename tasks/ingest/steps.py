"""Prefect tasks of ingestion: thin wrappers over the plain functions."""

from __future__ import annotations

from prefect import task

from tasks.ingest.run import IngestSummary, run_ingest
from tasks.settings import ArvidConfig


@task(name="ingest-dataset")
def ingest_step(config: ArvidConfig) -> IngestSummary:
    """Discover, decode, clip and shard the source; publish the dataset version; MLflow run."""
    return run_ingest(config)
