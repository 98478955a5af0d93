"""What tokenization tells MLflow: lineage tags and params when the run opens, results at the end."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks import storage, tracking
from tasks.config import config_hash
from tasks.data.datasets import DatasetRef
from tasks.tokenize.config import TokenizeConfig
from tasks.tokenize.tokenizer_ref import TokenizerRecord


class TokenizeSummary(BaseModel):
    """What a tokenization did: versions, where the tokens are, counts and throughput."""

    dataset: str
    dataset_version: str
    tokenizer: str
    tokenizer_version: str | None
    tokenizer_run_id: str | None
    tokenizer_label: str
    resolution: int
    frames: int
    tokens_uri: str
    manifest: str
    tokens_version: str
    token_shapes: list[list[int]]
    clips_total: int
    clips_new: int
    shards_total: int
    shards_new: int
    shards_skipped: int
    published_new: bool
    actors: int
    device: str
    process_seconds: float
    clips_per_s: float
    actor_busy_ratio: float
    batch_retries: int
    mlflow_run_id: str | None = None

    def line(self) -> str:
        """The one-line human summary."""
        status = (
            "new token version published"
            if self.published_new
            else "nothing new: tokens already published"
        )
        return (
            f"tokenize {self.dataset}@{self.dataset_version} with {self.tokenizer_label}"
            f" at {self.resolution}x{self.frames}: {self.clips_total} clips in {self.shards_total} shards "
            f"({self.shards_new} new, {self.shards_skipped} already done), "
            f"{self.clips_per_s:.1f} clips/s on {self.actors} {self.device} actor(s); "
            f"tokens {self.tokens_version}; {status} -> {self.manifest}"
        )


def run_tags(
    dataset: DatasetRef, record: TokenizerRecord, tc: TokenizeConfig, out: str
) -> dict[str, str]:
    """Lineage tags of a tokenization run: dataset, tokenizer and config versions, where tokens go."""
    return {
        "arvid.step": "tokenize",
        "arvid.dataset": dataset.name,
        "arvid.dataset_version": dataset.version,
        "arvid.tokenizer": record.name or record.reference,
        "arvid.tokenizer_version": record.version or record.label,
        "arvid.tokenizer_run_id": record.run_id or "",
        "arvid.config_hash": config_hash(tc),
        "arvid.tokens_uri": out,
    }


def run_params(record: TokenizerRecord, tc: TokenizeConfig) -> dict[str, Any]:
    """Params of a tokenization run: the tokenize config and the tokenizer record."""
    return {"tokenize": tc.model_dump(mode="json"), "tokenizer": record.model_dump(mode="json")}


def record_results(summary: TokenizeSummary) -> None:
    """Counts, throughput and the token version on the active MLflow run; manifest as artifact."""
    tracking.set_tags({"arvid.tokens_version": summary.tokens_version})
    tracking.log_metrics(
        {
            "clips_total": summary.clips_total,
            "clips_new": summary.clips_new,
            "shards_total": summary.shards_total,
            "shards_new": summary.shards_new,
            "shards_skipped": summary.shards_skipped,
            "process_seconds": summary.process_seconds,
            "clips_per_s": summary.clips_per_s,
            "actor_busy_ratio": summary.actor_busy_ratio,
            "batch_retries": summary.batch_retries,
            "actors": summary.actors,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        side_files = [
            storage.join(summary.tokens_uri, n) for n in ("tokenizer.json", "tokens.json")
        ]
        for uri in (summary.manifest, *side_files):
            local = Path(tmp) / uri.rsplit("/", 1)[-1]
            local.write_text(storage.read_text(uri))
            tracking.log_artifact(local, "tokens")
        summary_file = Path(tmp) / "summary.json"
        summary_file.write_text(json.dumps(summary.model_dump(mode="json"), indent=2))
        tracking.log_artifact(summary_file, "tokens")
