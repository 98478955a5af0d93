"""What an ingestion tells MLflow: lineage tags and params up front, then counts, throughput and
the dataset's manifest and quarantine list as artifacts of the same run."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tasks import storage, tracking
from tasks.config import config_hash
from tasks.ingest.config import IngestConfig
from tasks.ingest.run import IngestSummary


def run_tags(config: IngestConfig) -> dict[str, str]:
    """Tags known before the run starts (the dataset version is added when it is known)."""
    return {
        "arvid.step": "ingest",
        "arvid.dataset": config.name,
        "arvid.config_hash": config_hash(config),
    }


def run_params(config: IngestConfig) -> dict[str, Any]:
    """The ingestion config as flat MLflow params."""
    return {"ingest": config.model_dump(mode="json")}


def record_results(summary: IngestSummary) -> None:
    """Version tag, counts by reason, throughput, manifest, quarantine and summary on the active run."""
    tracking.set_tags({"arvid.dataset_version": summary.version})
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
