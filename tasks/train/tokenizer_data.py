"""Training clips for the tokenizer: an IterableDataset over an ingested dataset's shards.

Each epoch every worker draws the same seeded permutation of the shard list and takes every
`world_size`-th shard from its rank on, so the workers read disjoint shard subsets that together
cover the dataset, and the assignment changes from epoch to epoch. Within a worker a small buffer
mixes clips across its shards; crops and flips are drawn from a generator seeded by (seed, rank,
epoch), so a run is reproducible. Workers count epochs on their own (their shares differ in
size); a resumed run starts at an epoch number derived from its step, so it does not replay the
first epoch's order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset

from tasks.data.clips import DecodedClipCache, clip_tensor, iter_shard
from tasks.data.datasets import DatasetRef


def assign_shards(
    shards: list[str], rank: int, world_size: int, epoch: int, seed: int
) -> list[str]:
    """The shards worker `rank` of `world_size` reads in `epoch`, in reading order."""
    order = sorted(shards)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[rank::world_size]


class ShardClipDataset(IterableDataset):
    """Endless stream of (3, frames, crop, crop) clips in [-1, 1] from this worker's shards
    (crop defaults to size, the side the clips are resized to); decoded clips are kept in the
    `decoded` cache (None: none kept), so a small dataset is decoded once, not every epoch."""

    def __init__(
        self,
        dataset: DatasetRef,
        size: int,
        frames: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        random_crop: bool = True,
        random_flip: bool = True,
        shuffle_buffer: int = 32,
        first_epoch: int = 0,
        crop: int | None = None,
        decoded: DecodedClipCache | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.shards = list(dataset.rows_by_shard())
        if len(self.shards) < world_size:
            raise ValueError(
                f"{dataset.root}@{dataset.version}: {len(self.shards)} shard(s) for {world_size} "
                "workers; each worker needs its own shard — use fewer workers "
                "(tokenizer_training.num_workers) or re-ingest with a smaller ingest.inputs_per_shard"
            )
        shortest = min((row.get("frames", frames) for row in dataset.rows), default=frames)
        if shortest < frames:
            raise ValueError(
                f"{dataset.root}@{dataset.version}: clips of {shortest} frames, {frames} needed — "
                "lower tokenizer_training.frames or re-ingest with a larger ingest.clip_frames"
            )
        self.size, self.frames, self.crop = size, frames, crop
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.random_crop, self.random_flip = random_crop, random_flip
        self.shuffle_buffer = shuffle_buffer
        self.first_epoch = first_epoch
        # The caller owns the cache: the loop keeps one across its switch from crops to whole
        # windows, so nothing is decoded twice.
        self.decoded = decoded if decoded is not None else DecodedClipCache(0)

    def shards_for_epoch(self, epoch: int) -> list[str]:
        """This worker's shards in `epoch`."""
        return assign_shards(self.shards, self.rank, self.world_size, epoch, self.seed)

    def iter_epoch(self, epoch: int) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
        """(metadata, clip) for every clip of this worker's shards in `epoch`, buffer-shuffled."""
        mixer = random.Random(f"{self.seed}:{self.rank}:{epoch}")
        generator = torch.Generator().manual_seed(mixer.getrandbits(63))
        buffer: list[tuple[dict[str, Any], bytes]] = []

        def shaped(item: tuple[dict[str, Any], bytes]) -> tuple[dict[str, Any], torch.Tensor]:
            meta, mp4 = item
            clip = clip_tensor(
                self.decoded.frames(mp4),
                self.size,
                self.frames,
                generator,
                random_crop=self.random_crop,
                random_flip=self.random_flip,
                crop=self.crop,
            )
            return meta, clip

        for shard in self.shards_for_epoch(epoch):
            for item in iter_shard(self.dataset.shard_uri(shard)):
                # The buffer holds mp4 bytes (a few KB each), decoded only when drawn.
                buffer.append(item)
                if len(buffer) >= self.shuffle_buffer:
                    yield shaped(buffer.pop(mixer.randrange(len(buffer))))
        mixer.shuffle(buffer)
        for item in buffer:
            yield shaped(item)

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = self.first_epoch
        while True:
            empty = True
            for _, clip in self.iter_epoch(epoch):
                empty = False
                yield clip
            if empty:
                raise ValueError(
                    f"{self.dataset.root}@{self.dataset.version}: no clips to train on"
                )
            epoch += 1
