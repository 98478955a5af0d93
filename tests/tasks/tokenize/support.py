"""Shared set-up for tokenization tests: an ingested dataset, a registered toy tokenizer, a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.tokenizer import TokenizerConfig, VideoTokenizer, save_tokenizer
from tasks.ingest.config import IngestConfig, SyntheticDatasetConfig
from tasks.ingest.run import IngestSummary, ingest_dataset
from tasks.ingest.synthetic import make_synthetic_dataset
from tasks.registry import TOKENIZER_MODEL, log_model_dir, register
from tasks.settings import ArvidConfig
from tasks.tracking import TrackingConfig, tracked_run


def make_dataset(root: Path, count: int = 4, inputs_per_shard: int = 2) -> IngestSummary:
    """`count` 64x64 synthetic videos -> 2 clips of 9 frames each, `inputs_per_shard` videos a shard."""
    make_synthetic_dataset(
        SyntheticDatasetConfig(count=count, frames=24, preset="ultrafast"), root / "raw"
    )
    return ingest_dataset(
        IngestConfig(
            source=str(root / "raw" / "labels.jsonl"),
            output_root=str(root / "datasets"),
            name="d",
            clip_frames=9,
            clip_stride=8,
            inputs_per_shard=inputs_per_shard,
            workers=1,
            progress=False,
        )
    )


def tiny_tokenizer(scales: list[int] | None = None) -> VideoTokenizer:
    """A random toy tokenizer (4x in time, 8x in space): random weights tokenize just as well."""
    torch.manual_seed(0)
    config = TokenizerConfig(
        base_channels=4, channel_multipliers=[1, 1, 1, 1], num_res_blocks=1, scales=scales
    )
    return VideoTokenizer(config).eval()


def register_tokenizer(
    tracking: TrackingConfig, directory: Path, tokenizer: VideoTokenizer, alias: str = "champion"
) -> str:
    """Save, log and register the tokenizer in the tracking store; returns its version."""
    save_tokenizer(tokenizer, directory)
    with tracked_run(tracking, "train-tokenizer") as run:
        uri = log_model_dir(directory, "tokenizer", "tokenizer")
        return register(uri, TOKENIZER_MODEL, run.info.run_id, {}, alias=alias)


def config(
    tracking: TrackingConfig, dataset_root: str, tokens_root: str, **tokenize: Any
) -> ArvidConfig:
    """An ArvidConfig that tokenizes `dataset_root` into `tokens_root` at 32x9: batches of 2, 1 actor."""
    return ArvidConfig.model_validate(
        {
            "tracking": tracking.model_dump(),
            "ingest": {"source": "unused", "output_root": "unused"},
            "tokenize": {
                "dataset": dataset_root,
                "tokenizer": "models:/arvid-tokenizer@champion",
                "tokens_root": tokens_root,
                "resolution": 32,
                "frames": 9,
                "batch_size": 2,
                # One actor unless a test asks for more: each costs seconds of start-up on 2 cores.
                "num_actors": 1,
                "progress": False,
                **tokenize,
            },
        }
    )
