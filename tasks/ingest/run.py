"""`ingest_dataset`: the whole ingestion as one plain function (the Prefect flow wraps its steps)."""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from tqdm import tqdm

from tasks import storage, tracking
from tasks.data.manifest import jsonl, manifest_version
from tasks.ingest.config import IngestConfig
from tasks.ingest.decode import InputResult, process_input
from tasks.ingest.quarantine import QuarantineRecord, Reason
from tasks.ingest.shards import (
    Batch,
    BatchRecord,
    DatasetOutput,
    dataset_output,
    plan_batches,
    publish_batch,
)
from tasks.ingest.sources import Discovery, SourceInput, discover_inputs
from tasks.ingest.workers import SupervisedPool, TaskFailure
from tasks.settings import ArvidConfig

log = logging.getLogger("arvid.ingest")

FAILURE_REASONS = {
    "timeout": Reason.DECODE_TIMEOUT,
    "crashed": Reason.DECODER_CRASHED,
    "error": Reason.DECODE_ERROR,
}


class IngestSummary(BaseModel):
    """What an ingestion did: the dataset version, counts, throughput and where things are."""

    dataset: str
    version: str
    dataset_root: str
    manifest: str
    quarantine_file: str
    source: str
    source_kind: str
    inputs_total: int
    inputs_processed: int
    inputs_skipped: int
    clips_total: int
    clips_new: int
    quarantined_total: int
    quarantined_by_reason: dict[str, int]
    shards_new: int
    published_new: bool
    decoded_frames: int
    process_seconds: float
    clips_per_s: float
    frames_per_s: float
    worker_restarts: int
    # Inputs whose header promised more frames than decode: their clean clips landed, marked
    # "partial" in the manifest (ingest.strict_frame_count quarantines them instead).
    inputs_partial: int = 0
    # Files a folder/prefix scan passed over, by extension (sources.skipped_extension).
    skipped_by_extension: dict[str, int] = Field(default_factory=dict)
    mlflow_run_id: str | None = None

    def line(self) -> str:
        """The one-line human summary."""
        status = (
            "new version published"
            if self.published_new
            else "nothing new: version already published"
        )
        partial = f", {self.inputs_partial} partial" if self.inputs_partial else ""
        skipped = ""
        if self.skipped_by_extension:
            counts = ", ".join(f"{ext}: {n}" for ext, n in self.skipped_by_extension.items())
            skipped = (
                f", {sum(self.skipped_by_extension.values())} files skipped by extension ({counts})"
            )
        return (
            f"ingest {self.dataset}@{self.version}: {self.clips_total} clips from {self.inputs_total} inputs "
            f"({self.inputs_processed} processed, {self.inputs_skipped} already ingested{partial}), "
            f"{self.quarantined_total} quarantined{skipped}, {self.shards_new} new shards, "
            f"{self.clips_per_s:.1f} clips/s; {status} -> {self.manifest}"
        )


@dataclass
class DecodeStats:
    """What decoding the planned batches did: time (excluding worker start-up) and counts."""

    seconds: float = 0.0
    clips: int = 0
    frames: int = 0
    quarantined: int = 0
    restarts: int = 0


def _initialize_worker(storage_settings: storage.StorageSettings | None) -> None:
    if storage_settings is not None:
        storage.configure_storage(storage_settings)


def _failure_result(item: SourceInput, failure: TaskFailure) -> InputResult:
    return InputResult(
        key=item.key,
        quarantine=QuarantineRecord(
            input=item.key,
            reason_code=FAILURE_REASONS[failure.kind],
            reason=failure.message,
            stage="decode",
        ),
    )


def process_batches(
    config: IngestConfig,
    batches: list[Batch],
    output: DatasetOutput,
    storage_settings: storage.StorageSettings | None = None,
) -> tuple[list[BatchRecord], DecodeStats]:
    """Decode every input of `batches` in supervised workers; publish each batch as soon as it is whole."""
    owner = {item.key: batch.batch_id for batch in batches for item in batch.inputs}
    waiting = {batch.batch_id: len(batch.inputs) for batch in batches}
    results: dict[str, list[InputResult]] = {batch.batch_id: [] for batch in batches}
    by_id = {batch.batch_id: batch for batch in batches}
    records: list[BatchRecord] = []
    stats = DecodeStats()
    items = [item for batch in batches for item in batch.inputs]
    work = functools.partial(process_input, config=config)
    progress = tqdm(
        total=len(items),
        unit="video",
        desc="ingest",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    with (
        progress,
        SupervisedPool(
            work, config.workers, config.decode_timeout_s, _initialize_worker, (storage_settings,)
        ) as pool,
    ):
        started = time.perf_counter()  # throughput excludes worker start-up
        for item, outcome in pool.imap_unordered(items):
            result = _failure_result(item, outcome) if isinstance(outcome, TaskFailure) else outcome
            if result.quarantine is not None:
                stats.quarantined += 1
                log.warning("quarantined %s", result.quarantine.line())
            stats.clips += len(result.clips)
            stats.frames += result.decoded_frames
            batch_id = owner[item.key]
            results[batch_id].append(result)
            waiting[batch_id] -= 1
            if waiting[batch_id] == 0:
                done = results.pop(batch_id)
                records.append(
                    publish_batch(
                        output,
                        by_id[batch_id],
                        [clip for r in done for clip in r.clips],
                        [r.quarantine for r in done if r.quarantine is not None],
                    )
                )
            progress.update(1)
            progress.set_postfix(clips=stats.clips, quarantined=stats.quarantined, refresh=False)
        stats.restarts = pool.restarts
    stats.seconds = time.perf_counter() - started
    return records, stats


def _select_records(discovery: Discovery, records: Iterable[BatchRecord]) -> dict[str, BatchRecord]:
    """For each current input, the record that ingested it at its current size (first by batch id)."""
    sizes = {item.key: item.size for item in discovery.inputs}
    chosen: dict[str, BatchRecord] = {}
    for record in sorted(records, key=lambda r: r.batch_id):
        for key, size in record.inputs.items():
            if sizes.get(key) == size and key not in chosen:
                chosen[key] = record
    return chosen


def ingest_dataset(
    config: IngestConfig, storage_settings: storage.StorageSettings | None = None
) -> IngestSummary:
    """Ingest `config.source` into a versioned dataset of webdataset clip shards; resumable and idempotent."""
    output = dataset_output(config)
    with tempfile.TemporaryDirectory(prefix="arvid-staging-") as staging:
        discovery = discover_inputs(config.source, Path(staging))
        log.info("%s: %d inputs found (%s)", config.source, len(discovery.inputs), discovery.kind)
        done = _select_records(discovery, output.complete_records().values())
        batches = plan_batches(discovery.inputs, done, config.inputs_per_shard, output)
        new_records, stats = process_batches(config, batches, output, storage_settings)

    chosen = _select_records(discovery, output.complete_records().values())
    rows = sorted(
        (row for key, record in chosen.items() for row in record.clips if row["input"] == key),
        key=lambda row: row["key"],
    )
    quarantine = sorted(
        [q for key, record in chosen.items() for q in record.quarantine if q.input == key]
        + discovery.quarantine,
        key=lambda q: (q.input, q.reason_code),
    )
    manifest_text = jsonl(rows)
    by_reason = Counter(q.reason_code.value for q in quarantine)
    info: dict[str, Any] = {
        "name": config.name,
        "version": manifest_version(manifest_text),
        "source": config.source,
        "source_kind": discovery.kind,
        "clips": len(rows),
        "inputs": len(discovery.inputs),
        "quarantined": len(quarantine),
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "shards": sorted({row["shard"] for row in rows}),
        "clip_config": output.digest,
        "config": config.model_dump(mode="json"),
    }
    # Same manifest, other rejects (e.g. a broken file was added): the version keeps the latest list.
    commit = output.commit(
        manifest_text,
        {
            "quarantine.jsonl": jsonl(q.model_dump(mode="json") for q in quarantine),
            "dataset.json": info,
        },
    )

    seconds = stats.seconds
    processed = sum(len(b.inputs) for b in batches)
    return IngestSummary(
        dataset=config.name,
        version=commit.version,
        dataset_root=output.root,
        manifest=commit.manifest,
        quarantine_file=storage.join(commit.folder, "quarantine.jsonl"),
        source=config.source,
        source_kind=discovery.kind,
        inputs_total=len(discovery.inputs),
        inputs_processed=processed,
        inputs_skipped=len(discovery.inputs) - processed,
        clips_total=len(rows),
        clips_new=stats.clips,
        quarantined_total=len(quarantine),
        quarantined_by_reason=dict(sorted(by_reason.items())),
        shards_new=sum(1 for r in new_records if r.shard),
        published_new=commit.published,
        decoded_frames=stats.frames,
        process_seconds=round(seconds, 3),
        clips_per_s=round(stats.clips / seconds, 3) if seconds > 0 and processed else 0.0,
        frames_per_s=round(stats.frames / seconds, 3) if seconds > 0 and processed else 0.0,
        worker_restarts=stats.restarts,
        inputs_partial=len({row["input"] for row in rows if row.get("partial")}),
        skipped_by_extension=discovery.skipped_by_extension,
    )


def run_ingest(config: ArvidConfig) -> IngestSummary:
    """`ingest_dataset` inside its MLflow run (opened first, as every step opens its own):
    params and lineage tags, then counts, throughput, manifest and quarantine (report.py)."""
    from tasks.ingest.report import record_results, run_params, run_tags

    ingest = config.ingest
    with tracking.tracked_run(
        config.tracking, f"ingest-{ingest.name}", run_params(ingest), run_tags(ingest)
    ) as run:
        summary = ingest_dataset(ingest, config.storage)
        summary.mlflow_run_id = run.info.run_id
        record_results(summary)
    return summary
