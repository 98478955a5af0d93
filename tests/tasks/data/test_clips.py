"""Reading ingested datasets back: resolve a version, stream its shards, shape clips into tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.data.clips import clip_tensor, iter_shard
from tasks.data.datasets import resolve_dataset
from tasks.data.video import decode_clip
from tasks.ingest.config import IngestConfig, SyntheticDatasetConfig
from tasks.ingest.run import ingest_dataset
from tasks.ingest.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ds")
    make_synthetic_dataset(
        SyntheticDatasetConfig(count=3, frames=24, preset="ultrafast"), root / "raw"
    )
    config = IngestConfig(
        source=str(root / "raw" / "labels.jsonl"),
        output_root=str(root / "out"),
        name="d",
        clip_frames=9,
        clip_stride=8,
        progress=False,
    )
    return ingest_dataset(config)


def test_latest_and_pinned_versions_resolve_to_the_same_rows(dataset) -> None:
    latest = resolve_dataset(dataset.dataset_root)
    pinned = resolve_dataset(f"{dataset.dataset_root}@{dataset.version}")
    assert latest.version == pinned.version == dataset.version
    assert latest.rows == pinned.rows and len(latest.rows) == 6


def test_unknown_dataset_or_version_is_a_clear_error(dataset, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `arvid ingest` first"):
        resolve_dataset(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="dataset version 'abc' not found"):
        resolve_dataset(f"{dataset.dataset_root}@abc")


def test_shards_stream_back_the_manifest_clips_bit_for_bit(dataset) -> None:
    ref = resolve_dataset(dataset.dataset_root)
    for shard, rows in ref.rows_by_shard().items():
        clips = list(iter_shard(ref.shard_uri(shard)))
        assert [meta["key"] for meta, _ in clips] == [row["key"] for row in rows]
        for (meta, mp4), row in zip(clips, rows, strict=True):
            assert hashlib.sha256(mp4).hexdigest() == row["sha256"] == meta["sha256"]
            frames = decode_clip(mp4)
            assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8


def test_clip_tensor_resizes_crops_and_is_reproducible() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (12, 48, 80, 3), dtype=np.uint8)
    centre = clip_tensor(frames, size=32, num_frames=9)
    assert centre.shape == (3, 9, 32, 32) and -1.0 <= centre.min() and centre.max() <= 1.0
    a = clip_tensor(
        frames, 32, 9, torch.Generator().manual_seed(1), random_crop=True, random_flip=True
    )
    b = clip_tensor(
        frames, 32, 9, torch.Generator().manual_seed(1), random_crop=True, random_flip=True
    )
    assert torch.equal(a, b)
    same = clip_tensor(frames[:, :32, :32], size=32, num_frames=12)
    assert torch.allclose(
        same, torch.from_numpy(frames[:, :32, :32]).float().permute(3, 0, 1, 2) / 127.5 - 1
    )
    with pytest.raises(ValueError, match="13 needed"):
        clip_tensor(frames, 32, 13)


def test_clip_tensor_cuts_a_smaller_window_from_the_resized_clip() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    whole = clip_tensor(frames, size=64, num_frames=12)
    window = clip_tensor(frames, 64, 9, torch.Generator().manual_seed(2), random_crop=True, crop=32)
    assert window.shape == (3, 9, 32, 32)
    # The window is a piece of the clip, not the clip shrunk to 32 pixels.
    hits = [
        (t, y, x)
        for t in range(4)
        for y in range(33)
        for x in range(33)
        if torch.equal(whole[:, t : t + 9, y : y + 32, x : x + 32], window)
    ]
    assert len(hits) == 1
    with pytest.raises(ValueError, match="crop=80"):
        clip_tensor(frames, 64, 9, crop=80)
