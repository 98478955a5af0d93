"""Prefect tasks of ingestion: thin wrappers over the plain functions."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import task

from tasks import storage, tracking
from tasks.config import config_hash
from tasks.ingest.run import IngestSummary, ingest_dataset
from tasks.settings import ArvidConfig


@task(name="ingest-dataset")
def ingest_step(config: ArvidConfig) -> IngestSummary:
    """Discover, decode, clip and shard the source; publish the dataset version."""
    return ingest_dataset(config.ingest, config.storage)


@task(name="record-ingest-run")
def record_ingest_run(summary: IngestSummary, config: ArvidConfig) -> str:
    """Log the ingestion to MLflow: params, counts by reason, throughput, manifest and quarantine."""
    tags = {
        "arvid.step": "ingest",
        "arvid.dataset": summary.dataset,
        "arvid.dataset_version": summary.version,
        "arvid.config_hash": config_hash(config.ingest),
    }
    params = {"ingest": config.ingest.model_dump(mode="json")}
    with tracking.tracked_run(config.tracking, f"ingest-{summary.dataset}", params, tags) as run:
        metrics = {
            "inputs_total": summary.inputs_total,
            "inputs_processed": summary.inputs_processed,
            "inputs_skipped": summary.inputs_skipped,
            "clips_total": summary.clips_total,
            "clips_new": summary.clips_new,
            "quarantined_total": summary.quarantined_total,
            "shards_new": summary.shards_new,
            "clips_per_s": summary.clips_per_s,
            "frames_per_s": summary.frames_per_s,
            "process_seconds": summary.process_seconds,
            "worker_restarts": summary.worker_restarts,
            "inputs_partial": summary.inputs_partial,
            "skipped_total": sum(summary.skipped_by_extension.values()),
        }
        metrics.update(
            {f"quarantined_{reason}": n for reason, n in summary.quarantined_by_reason.items()}
        )
        metrics.update({f"skipped_ext_{ext}": n for ext, n in summary.skipped_by_extension.items()})
        tracking.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for uri in (summary.manifest, summary.quarantine_file):
                local = Path(tmp) / uri.rsplit("/", 1)[-1]
                local.write_text(storage.read_text(uri))
                tracking.log_artifact(local, "dataset")
            summary_file = Path(tmp) / "summary.json"
            summary_file.write_text(json.dumps(summary.model_dump(mode="json"), indent=2))
            tracking.log_artifact(summary_file, "dataset")
        return run.info.run_id
