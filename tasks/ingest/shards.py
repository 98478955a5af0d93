"""Deterministic batches, webdataset shard writing, completion records, manifests and versions.

Resuming is "skip what is complete": inputs are sorted and cut into fixed-size batches; a batch
is one shard, named by a hash of its inputs and of the config that shapes clips. A batch is
complete once its record (batches/<id>.json) exists, and the record is written only after the
shard itself is published. Completed batches are whole chunks of the sorted list, so removing
them leaves the remaining chunks - and so their names - exactly as an uninterrupted run has them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from tasks import storage
from tasks.data.tar import deterministic_tar
from tasks.ingest.config import IngestConfig
from tasks.ingest.decode import ClipOutput
from tasks.ingest.quarantine import QuarantineRecord
from tasks.ingest.sources import SourceInput

RECORD_FORMAT = 1

# Fields of IngestConfig that change what a clip contains; the rest (workers, progress, ...) do not.
CLIP_SHAPING_FIELDS = (
    "min_duration_s",
    "max_duration_s",
    "min_height",
    "min_width",
    "max_pixels",
    "fps",
    "clip_frames",
    "clip_stride",
    "resize_short_side",
    "clip_crf",
    "clip_preset",
    "strict_frame_count",
)


class Batch(BaseModel):
    """A fixed group of inputs that becomes one shard."""

    batch_id: str
    inputs: list[SourceInput]


class BatchRecord(BaseModel):
    """The completion record of a batch: which inputs, their clips' rows, and what was rejected."""

    format: int = RECORD_FORMAT
    batch_id: str
    clip_config: str
    shard: str | None
    inputs: dict[str, int]  # input key -> size in bytes when ingested
    clips: list[dict[str, Any]]
    quarantine: list[QuarantineRecord]


def clip_config_digest(config: IngestConfig) -> str:
    """Hash of the settings that shape clips: a change means a different set of shards."""
    shaping = {name: getattr(config, name) for name in CLIP_SHAPING_FIELDS}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


def dataset_root(config: IngestConfig) -> str:
    """<output_root>/<name>: shards and batch records live here, versions below it."""
    return storage.join(config.output_root, config.name)


def plan_batches(
    inputs: list[SourceInput], done: set[str] | dict[str, Any], per_batch: int, digest: str
) -> list[Batch]:
    """Cut the inputs not yet done (sorted by key) into fixed-size batches with content-derived ids."""
    todo = sorted((item for item in inputs if item.key not in done), key=lambda item: item.key)
    batches = []
    for start in range(0, len(todo), per_batch):
        chunk = todo[start : start + per_batch]
        identity = "\n".join([digest] + [f"{item.key}\t{item.size}" for item in chunk])
        batch_id = "shard-" + hashlib.sha256(identity.encode()).hexdigest()[:16]
        batches.append(Batch(batch_id=batch_id, inputs=chunk))
    return batches


def load_records(root: str, digest: str) -> list[BatchRecord]:
    """Completion records under `root` written with the same clip config."""
    records = []
    for uri in storage.list_prefix(storage.join(root, "batches"), recursive=False):
        if not uri.endswith(".json"):
            continue
        record = BatchRecord.model_validate_json(storage.read_text(uri))
        if record.clip_config == digest:
            records.append(record)
    return records


def shard_bytes(clips: Iterable[ClipOutput]) -> bytes:
    """A webdataset tar of <key>.mp4 + <key>.json per clip, sorted by key, byte-deterministic."""
    members = []
    for clip in sorted(clips, key=lambda c: c.key):
        members.append((f"{clip.key}.mp4", clip.mp4))
        members.append((f"{clip.key}.json", json.dumps(clip.metadata, sort_keys=True).encode()))
    return deterministic_tar(members)


def publish_batch(
    root: str,
    batch: Batch,
    digest: str,
    clips: list[ClipOutput],
    quarantine: list[QuarantineRecord],
) -> BatchRecord:
    """Publish the shard (atomically), then its completion record; returns the record."""
    shard_name = f"shards/{batch.batch_id}.tar" if clips else None
    if shard_name is not None:
        storage.write_bytes(storage.join(root, shard_name), shard_bytes(clips))
    rows = [
        {**clip.metadata, "shard": shard_name, "bytes": len(clip.mp4)}
        for clip in sorted(clips, key=lambda c: c.key)
    ]
    record = BatchRecord(
        batch_id=batch.batch_id,
        clip_config=digest,
        shard=shard_name,
        inputs={item.key: item.size for item in batch.inputs},
        clips=rows,
        quarantine=sorted(quarantine, key=lambda r: r.input),
    )
    storage.write_text(
        storage.join(root, "batches", f"{batch.batch_id}.json"), record.model_dump_json()
    )
    return record


def jsonl(rows: Iterable[dict[str, Any]]) -> str:
    """Canonical JSON lines: sorted keys, one row per line, trailing newline."""
    return "".join(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n" for row in rows)


def manifest_version(manifest_text: str) -> str:
    """Dataset version: the content hash of the manifest."""
    return hashlib.sha256(manifest_text.encode()).hexdigest()[:16]
