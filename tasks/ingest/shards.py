"""Ingestion's sharded output: deterministic batches of inputs, clip shards and their records.

Published through the sharded-output protocol (tasks/data/sharded_output.py) under
<output_root>/<name>/: shards/<batch>.tar, batches/<batch>.json (completion records), and one
<version>/ folder per manifest with latest.json beside them. Inputs are sorted and cut into
fixed-size batches; a batch is one shard, named by a hash of its inputs and of the config that
shapes clips. Completed batches are whole chunks of the sorted list, so removing them leaves the
remaining chunks - and so their names - exactly as an uninterrupted run has them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from tasks import storage
from tasks.data.sharded_output import ShardedOutput, ShardRecord
from tasks.data.tar import deterministic_tar
from tasks.ingest.config import IngestConfig
from tasks.ingest.decode import ClipOutput
from tasks.ingest.quarantine import QuarantineRecord
from tasks.ingest.sources import SourceInput

# 2: records carry the protocol's digest, shard size and hash (1 had only `clip_config`).
RECORD_FORMAT = 2

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


class BatchRecord(ShardRecord):
    """The completion record of a batch: which inputs, their clips' rows, and what was rejected."""

    format: int = RECORD_FORMAT
    batch_id: str
    inputs: dict[str, int]  # input key -> size in bytes when ingested
    clips: list[dict[str, Any]]
    quarantine: list[QuarantineRecord]


DatasetOutput = ShardedOutput[BatchRecord]


def clip_config_digest(config: IngestConfig) -> str:
    """Hash of the settings that shape clips: a change means a different set of shards."""
    shaping = {name: getattr(config, name) for name in CLIP_SHAPING_FIELDS}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


def dataset_root(config: IngestConfig) -> str:
    """<output_root>/<name>: shards and batch records live here, versions below it."""
    return storage.join(config.output_root, config.name)


def dataset_output(config: IngestConfig) -> DatasetOutput:
    """The dataset's sharded output: records in batches/, one folder per version, latest.json."""
    return ShardedOutput(
        dataset_root(config),
        clip_config_digest(config),
        BatchRecord,
        records_dir="batches",
        versioned=True,
    )


def plan_batches(
    inputs: list[SourceInput],
    done: set[str] | dict[str, Any],
    per_batch: int,
    output: DatasetOutput,
) -> list[Batch]:
    """Cut the inputs not yet done (sorted by key) into fixed-size batches with content-derived ids."""
    todo = sorted((item for item in inputs if item.key not in done), key=lambda item: item.key)
    batches = []
    for start in range(0, len(todo), per_batch):
        chunk = todo[start : start + per_batch]
        batch_id = output.unit_id(f"{item.key}\t{item.size}" for item in chunk)
        batches.append(Batch(batch_id=batch_id, inputs=chunk))
    return batches


def shard_bytes(clips: Iterable[ClipOutput]) -> bytes:
    """A webdataset tar of <key>.mp4 + <key>.json per clip, sorted by key, byte-deterministic."""
    members = []
    for clip in sorted(clips, key=lambda c: c.key):
        members.append((f"{clip.key}.mp4", clip.mp4))
        members.append((f"{clip.key}.json", json.dumps(clip.metadata, sort_keys=True).encode()))
    return deterministic_tar(members)


def publish_batch(
    output: DatasetOutput,
    batch: Batch,
    clips: list[ClipOutput],
    quarantine: list[QuarantineRecord],
) -> BatchRecord:
    """Publish the batch's shard (atomically, when it has clips), then its completion record."""
    shard_name = output.shard_name(batch.batch_id) if clips else None
    rows = [
        {**clip.metadata, "shard": shard_name, "bytes": len(clip.mp4)}
        for clip in sorted(clips, key=lambda c: c.key)
    ]
    record = BatchRecord(
        batch_id=batch.batch_id,
        inputs={item.key: item.size for item in batch.inputs},
        clips=rows,
        quarantine=sorted(quarantine, key=lambda r: r.input),
    )
    return output.publish(batch.batch_id, shard_bytes(clips) if clips else None, record)
