"""Which clips every worker trains on at every step: a pure function of (seed, step, rank).

The clips of a token dataset are numbered 0..N-1 (manifest order). Epoch e visits them in the
order `permutation(seed, e)`; the epochs are laid end to end into one stream, and global step s
takes the stream's items [s·B, (s+1)·B). Worker r of W takes every W-th item of that global
batch. So within an epoch no clip is seen twice and none is skipped, the workers never share a
clip within a step, and resuming at step s needs nothing but s: the data position of a
checkpoint is its step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchPlan:
    """The deterministic order of clips over steps and workers."""

    num_clips: int
    global_batch_size: int
    world_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_clips < 1:
            raise ValueError("the token dataset holds no clips: nothing to train on")
        if self.world_size < 1:
            raise ValueError(f"world_size={self.world_size}: at least one worker is needed")
        if self.global_batch_size < self.world_size or self.global_batch_size % self.world_size:
            raise ValueError(
                f"batch_size={self.global_batch_size} cannot be split evenly over "
                f"{self.world_size} workers: use a multiple of {self.world_size}"
            )

    @property
    def per_worker(self) -> int:
        """Clips each worker takes per step."""
        return self.global_batch_size // self.world_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of clip numbers visited in `epoch`."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_clips)

    def global_batch(self, step: int) -> np.ndarray:
        """Clip numbers of global step `step` (0-based), across epoch boundaries as needed."""
        if step < 0:
            raise ValueError(f"step={step}: steps count from 0")
        start = step * self.global_batch_size
        stop = start + self.global_batch_size
        parts = []
        for epoch in range(start // self.num_clips, (stop - 1) // self.num_clips + 1):
            offset = epoch * self.num_clips
            lo, hi = max(start, offset) - offset, min(stop, offset + self.num_clips) - offset
            parts.append(self.epoch_order(epoch)[lo:hi])
        return np.concatenate(parts)

    def worker_batch(self, step: int, rank: int) -> np.ndarray:
        """Clip numbers worker `rank` trains on at `step`."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank={rank}: workers are numbered 0..{self.world_size - 1}")
        return self.global_batch(step)[rank :: self.world_size]

    def epoch_of(self, step: int) -> float:
        """Epochs completed after `step` steps (fractional)."""
        return step * self.global_batch_size / self.num_clips
