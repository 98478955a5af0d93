"""Clips from ingested webdataset shards: stream them, decode them, shape them into tensors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from tasks.data.tar import read_samples
from tasks.data.video import decode_clip


def iter_shard(shard_uri: str) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(metadata, mp4 bytes) for every clip of one shard, in shard order (streamed, local or S3)."""
    for _, members in read_samples(shard_uri):
        if "mp4" in members and "json" in members:
            yield json.loads(members["json"]), members["mp4"]


class DecodedClipCache:
    """Decoded clips (uint8 frames) kept up to a byte budget, keyed by their mp4's digest.

    Decoding a small clip costs about as much as a CPU training step on it (PyAV's open and probe
    dominate), so on a dataset that fits every clip is decoded once per worker, not once per
    epoch. It fills once and never evicts: with clips drawn in random order, evicting keeps the
    hit rate at budget / dataset size anyway, and churning would only add work. Callers must
    not write into the frames they get (clip_tensor copies them).
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.hits = 0
        self.decodes = 0
        self._frames: dict[bytes, np.ndarray] = {}

    def frames(self, mp4: bytes) -> np.ndarray:
        """The clip's (T, H, W, 3) uint8 frames: from the cache, or decoded (and kept if they fit)."""
        if self.budget_bytes <= 0:
            self.decodes += 1
            return decode_clip(mp4)
        key = hashlib.sha256(mp4).digest()
        cached = self._frames.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        frames = decode_clip(mp4)
        self.decodes += 1
        if self.used_bytes + frames.nbytes <= self.budget_bytes:
            self._frames[key] = frames
            self.used_bytes += frames.nbytes
        return frames


def clip_tensor(
    frames: np.ndarray,
    size: int,
    num_frames: int,
    generator: torch.Generator | None = None,
    random_crop: bool = False,
    random_flip: bool = False,
    crop: int | None = None,
) -> torch.Tensor:
    """(T,H,W,3) uint8 -> (3, num_frames, crop, crop) float in [-1, 1]: short side resized to
    `size`, then a `crop`-sided square (default `size`) cut out.

    Center crop and the first `num_frames` frames unless random_crop (random window in space and time)
    or random_flip (horizontal) are asked for, drawn from `generator` for reproducibility.
    """
    if frames.shape[0] < num_frames:
        raise ValueError(f"clip has {frames.shape[0]} frames, {num_frames} needed")
    if crop is not None and not 0 < crop <= size:
        raise ValueError(f"crop={crop}: must be between 1 and the resized side {size}")
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    height, width = video.shape[-2:]
    scale = size / min(height, width)
    if scale != 1.0:
        new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
        video = torch.nn.functional.interpolate(
            video, size=new_size, mode="bilinear", antialias=True, align_corners=False
        )
    height, width = video.shape[-2:]
    side = size if crop is None else crop

    def pick(limit: int) -> int:
        if limit <= 0:
            return 0
        if not random_crop:
            return limit // 2
        return int(torch.randint(0, limit + 1, (1,), generator=generator))

    top, left = pick(height - side), pick(width - side)
    start = pick(frames.shape[0] - num_frames) if random_crop else 0
    video = video[start : start + num_frames, :, top : top + side, left : left + side]
    if random_flip and bool(torch.rand((), generator=generator) < 0.5):
        video = video.flip(-1)
    return (video / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()  # (3, T, S, S)
