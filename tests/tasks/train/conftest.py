"""A tiny ingested dataset and a tiny tokenizer training config, shared by the training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasks.data.datasets import DatasetRef, resolve_dataset
from tasks.ingest.config import IngestConfig, SyntheticDatasetConfig
from tasks.ingest.run import ingest_dataset
from tasks.ingest.synthetic import make_synthetic_dataset
from tasks.train.tokenizer_config import TokenizerTrainingConfig


def make_tiny_dataset(root: Path, videos: int = 4) -> DatasetRef:
    """`videos` synthetic 32x32 videos -> two 9-frame clips each, one shard per video."""
    make_synthetic_dataset(
        SyntheticDatasetConfig(count=videos, width=32, height=32, frames=24, preset="ultrafast"),
        root / "raw",
    )
    summary = ingest_dataset(
        IngestConfig(
            source=str(root / "raw" / "labels.jsonl"),
            output_root=str(root / "datasets"),
            name="tiny",
            clip_frames=9,
            clip_stride=8,
            inputs_per_shard=1,
            progress=False,
        )
    )
    return resolve_dataset(summary.dataset_root)


def tiny_training(**overrides: Any) -> TokenizerTrainingConfig:
    """A multi-scale tokenizer of a few thousand weights on 32x32x9 clips, GAN on from step 2."""
    settings: dict[str, Any] = {
        "model": {"base_channels": 4, "num_res_blocks": 1, "scales": [1, 2, 4]},
        "loss": {"gan_start_step": 2, "discriminator": {"base_channels": 4, "num_layers": 2}},
        "resolution": 32,
        "frames": 9,
        "batch_size": 2,
        "steps": 4,
        "checkpoint_every": 2,
        "log_every": 2,
        "sample_every": 2,
        "shuffle_buffer": 4,
        "threads_per_worker": 1,
    }
    return TokenizerTrainingConfig.model_validate(settings | overrides)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetRef:
    """Four videos ingested into four shards of two clips each."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-dataset"))


def small_window_training(**overrides: Any) -> TokenizerTrainingConfig:
    """tiny_training on 16x16x5 windows, one clip a step, with the (1, 2) pyramid a 2x2 latent
    holds (a multi-scale tokenizer trains on windows that keep every scale)."""
    settings: dict[str, Any] = {
        "model": {"base_channels": 4, "num_res_blocks": 1, "scales": [1, 2]},
        "resolution": 16,
        "frames": 5,
        "batch_size": 1,
    }
    return tiny_training(**(settings | overrides))
