"""Token output: where tokens go, what shapes them, their shard records, and the committed manifest.

Under <tokens_root>/<dataset-version>/<tokenizer-version>/<resolution>x<frames>/, through the
sharded-output protocol (tasks/data/sharded_output.py):

    shards/<shard>.tar     one token shard per dataset shard, same name (format: format.py)
    records/<shard>.json   completion record of a shard: its rows, size and hash; written after it
    tokenizer.json         the exact tokenizer: reference, name, version, run id, config/weights hash
    tokens.json            counts, shapes and the token dataset version
    manifest.jsonl         one row per clip, sorted by key; written last (the commit point). The
                           token dataset version is the content hash of this file.

The folder belongs to one digest (tokenizer, clip shape, format): records of another are refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tasks import storage
from tasks.data.datasets import DatasetRef
from tasks.data.manifest import jsonl, manifest_version
from tasks.data.sharded_output import Commit, ShardedOutput, ShardRecord
from tasks.tokenize.config import TokenizeConfig
from tasks.tokenize.format import FORMAT_VERSION, TokenizedClip, token_shard_bytes
from tasks.tokenize.tokenizer_ref import TokenizerRecord


class TokenShardRecord(ShardRecord):
    """Completion record of one token shard: the dataset shard it came from and its clip rows."""

    format: int = FORMAT_VERSION
    source_shard: str
    rows: list[dict[str, Any]]


TokenOutput = ShardedOutput[TokenShardRecord]


@dataclass
class ShardPlan:
    """One dataset shard to tokenize, cut into batches of clip keys."""

    source_shard: str  # e.g. shards/shard-<id>.tar, relative to the dataset root
    uri: str
    batches: list[list[str]]

    @property
    def unit(self) -> str:
        """The token shard's unit name: the dataset shard's own name."""
        return _unit(self.source_shard)

    @property
    def clips(self) -> int:
        """Clips in the shard."""
        return sum(len(b) for b in self.batches)


@dataclass(frozen=True)
class TokensCommit:
    """The committed token dataset: its version, manifest and counts."""

    commit: Commit
    clips: int
    shards: int
    token_shapes: list[list[int]]


def tokens_uri(
    tokens_root: str,
    dataset_version: str,
    tokenizer_label: str,
    resolution: int,
    frames: int,
    latents: bool = False,
) -> str:
    """<tokens_root>/<dataset-version>/<tokenizer-version>/<resolution>x<frames>[+latent]."""
    shape = f"{resolution}x{frames}" + ("+latent" if latents else "")
    return storage.join(tokens_root, dataset_version, tokenizer_label, shape)


def output_digest(
    tokenizer: TokenizerRecord, resolution: int, frames: int, latents: bool = False
) -> str:
    """Hash of everything that shapes the tokens; records made otherwise are not reused."""
    identity = f"{FORMAT_VERSION}:{tokenizer.digest}:{resolution}:{frames}:center-crop"
    if latents:
        identity += ":latents"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def token_output(out: str, digest: str) -> TokenOutput:
    """The sharded output of one tokenization (the folder holds one digest only)."""
    return ShardedOutput(out, digest, TokenShardRecord, records_dir="records", exclusive=True)


def _unit(source_shard: str) -> str:
    return source_shard.rsplit("/", 1)[-1].removesuffix(".tar")


def load_complete_records(output: TokenOutput, dataset: DatasetRef) -> dict[str, TokenShardRecord]:
    """Records of dataset shards already tokenized here, complete and holding the shard's clips.

    Raises ValueError when the folder holds tokens made by another tokenizer or format.
    """
    done: dict[str, TokenShardRecord] = {}
    for shard, rows in dataset.rows_by_shard().items():
        record = output.complete(_unit(shard))
        if record is not None and [r["key"] for r in record.rows] == [r["key"] for r in rows]:
            done[shard] = record
    return done


def plan_shards(
    dataset: DatasetRef, done: dict[str, TokenShardRecord], batch_size: int
) -> list[ShardPlan]:
    """The dataset's shards not yet done, each cut into batches of its clip keys (sorted)."""
    plans = []
    for shard, rows in dataset.rows_by_shard().items():
        if shard in done:
            continue
        keys = [row["key"] for row in rows]
        batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
        plans.append(ShardPlan(source_shard=shard, uri=dataset.shard_uri(shard), batches=batches))
    return plans


def publish_shard(
    output: TokenOutput, plan: ShardPlan, clips: list[TokenizedClip]
) -> TokenShardRecord:
    """Publish one token shard (atomically), then its completion record."""
    shard_name = output.shard_name(plan.unit)
    rows = [
        {
            "key": clip.key,
            "input": clip.metadata.get("input"),
            "label": clip.metadata.get("label"),
            "caption": clip.metadata.get("caption"),
            "shard": shard_name,
            "source_shard": plan.source_shard,
            "token_shapes": clip.token_shapes,
        }
        for clip in sorted(clips, key=lambda c: c.key)
    ]
    record = TokenShardRecord(source_shard=plan.source_shard, rows=rows)
    return output.publish(plan.unit, token_shard_bytes(clips), record)


def token_shapes(record: TokenizerRecord, tc: TokenizeConfig) -> list[list[int]]:
    """(t, h_k, w_k) of every scale the tokenizer gives a clip of the configured shape."""
    from models.tokenizer import scale_shapes

    t = 1 + (tc.frames - 1) // record.temporal_factor
    side = tc.resolution // record.spatial_factor
    shapes = scale_shapes(record.scales, side, side) if record.scales else [(side, side)]
    return [[t, h, w] for h, w in shapes]


def commit_tokens(
    output: TokenOutput, dataset: DatasetRef, record: TokenizerRecord, tc: TokenizeConfig
) -> TokensCommit:
    """Check exactly-once from the records, then publish tokenizer.json, tokens.json and the manifest."""
    out = output.root
    records = load_complete_records(output, dataset)
    missing = sorted(set(dataset.rows_by_shard()) - set(records))
    if missing:
        raise RuntimeError(f"{out}: shards {missing[:3]} have no completion record — re-run")
    rows = sorted((row for r in records.values() for row in r.rows), key=lambda row: row["key"])
    keys = [row["key"] for row in rows]
    expected = sorted(row["key"] for row in dataset.rows)
    if keys != expected:
        raise RuntimeError(
            f"{out}: token records hold {len(keys)} clips ({len(set(keys))} distinct), "
            f"the dataset {len(expected)} — remove {out} and re-run"
        )
    manifest_text = jsonl(rows)
    shapes = token_shapes(record, tc)
    # Without the reference as typed: @champion and /1 name the same tokens.
    persisted = record.model_dump(mode="json", exclude={"reference"})
    info = {
        "format": FORMAT_VERSION,
        "tokens_version": manifest_version(manifest_text),
        "dataset": dataset.root,
        "dataset_version": dataset.version,
        "tokenizer": persisted,
        "resolution": tc.resolution,
        "frames": tc.frames,
        "latents": tc.latents,
        "token_shapes": shapes,
        "clips": len(rows),
        "shards": sorted(r.shard for r in records.values() if r.shard),
        "digest": output.digest,
    }
    commit = output.commit(
        manifest_text,
        {
            "tokenizer.json": json.dumps(persisted, indent=2, sort_keys=True) + "\n",
            "tokens.json": info,
        },
    )
    return TokensCommit(commit=commit, clips=len(rows), shards=len(records), token_shapes=shapes)
