"""Training data: each worker reads its own shards, together all of them, reshuffled each epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.data.clips import DecodedClipCache, iter_shard
from tasks.data.datasets import DatasetRef
from tasks.data.video import decode_clip
from tasks.train.tokenizer_data import ShardClipDataset, assign_shards


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_assignment_is_disjoint_and_covers_every_shard(world_size: int) -> None:
    shards = [f"shards/shard-{i:02d}.tar" for i in range(11)]
    for epoch in range(3):
        parts = [
            assign_shards(shards, rank, world_size, epoch, seed=5) for rank in range(world_size)
        ]
        flat = [shard for part in parts for shard in part]
        assert len(flat) == len(set(flat)) and set(flat) == set(shards)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_order_is_reshuffled_each_epoch_and_reproducible() -> None:
    shards = [f"s{i}" for i in range(16)]
    orders = [tuple(assign_shards(shards, 0, 1, epoch, seed=0)) for epoch in range(4)]
    assert len(set(orders)) == 4
    assert assign_shards(shards, 1, 2, 3, seed=9) == assign_shards(
        list(reversed(shards)), 1, 2, 3, 9
    )
    assert assign_shards(shards, 0, 1, 0, seed=0) != assign_shards(shards, 0, 1, 0, seed=1)


def test_workers_stream_disjoint_clips_that_cover_the_dataset(tiny_dataset: DatasetRef) -> None:
    all_keys = {row["key"] for row in tiny_dataset.rows}
    for epoch in (0, 1):
        seen: list[str] = []
        for rank in range(2):
            data = ShardClipDataset(tiny_dataset, 16, 9, rank=rank, world_size=2, seed=3)
            clips = list(data.iter_epoch(epoch))
            for _, clip in clips:
                assert clip.shape == (3, 9, 16, 16) and -1 <= clip.min() and clip.max() <= 1
            seen += [meta["key"] for meta, _ in clips]
        assert len(seen) == len(set(seen)) and set(seen) == all_keys


def test_workers_can_train_on_windows_smaller_than_the_clips(tiny_dataset: DatasetRef) -> None:
    data = ShardClipDataset(tiny_dataset, 16, 5, crop=8)
    for _, clip in data.iter_epoch(0):
        assert clip.shape == (3, 5, 8, 8)


def test_stream_is_endless_and_seeded(tiny_dataset: DatasetRef) -> None:
    def first(n: int, seed: int) -> torch.Tensor:
        stream = iter(ShardClipDataset(tiny_dataset, 16, 5, seed=seed, shuffle_buffer=3))
        return torch.stack([next(stream) for _ in range(n)])

    # 20 clips from 8 in the dataset: the stream wraps into later epochs.
    assert torch.equal(first(20, seed=1), first(20, seed=1))
    assert not torch.equal(first(8, seed=1), first(8, seed=2))


def test_too_few_shards_or_too_short_clips_are_clear_errors(tiny_dataset: DatasetRef) -> None:
    with pytest.raises(ValueError, match="4 shard\\(s\\) for 5 workers"):
        ShardClipDataset(tiny_dataset, 16, 9, world_size=5)
    with pytest.raises(ValueError, match="clips of 9 frames, 13 needed"):
        ShardClipDataset(tiny_dataset, 16, 13)


def test_decoded_clips_are_cached_without_changing_what_is_drawn(tiny_dataset: DatasetRef) -> None:
    plain = ShardClipDataset(tiny_dataset, 16, 5, seed=1)
    cached = ShardClipDataset(tiny_dataset, 16, 5, seed=1, decoded=DecodedClipCache(64 * 2**20))
    for epoch in (0, 1):
        drawn = list(cached.iter_epoch(epoch))
        expected = list(plain.iter_epoch(epoch))
        assert len(drawn) == len(expected) == len(tiny_dataset.rows)
        for (meta, clip), (meta_expected, clip_expected) in zip(drawn, expected, strict=True):
            assert meta == meta_expected and torch.equal(clip, clip_expected)
    clips = len(tiny_dataset.rows)
    assert (cached.decoded.decodes, cached.decoded.hits) == (clips, clips)
    assert (plain.decoded.decodes, plain.decoded.hits) == (2 * clips, 0)


def test_a_shared_cache_serves_a_second_dataset_without_decoding_again(
    tiny_dataset: DatasetRef,
) -> None:
    # The training loop switches from crops to whole windows with a new dataset and one cache.
    shared = DecodedClipCache(budget_bytes=64 * 2**20)
    crops = ShardClipDataset(tiny_dataset, 16, 5, seed=1, crop=8, decoded=shared)
    whole = ShardClipDataset(tiny_dataset, 16, 5, seed=1, decoded=shared)
    clips = len(tiny_dataset.rows)
    assert len(list(crops.iter_epoch(0))) == clips
    assert [c.shape[-1] for _, c in whole.iter_epoch(0)] == [16] * clips
    assert (shared.decodes, shared.hits) == (clips, clips)


def test_the_decoded_cache_keeps_only_what_fits_its_budget(tiny_dataset: DatasetRef) -> None:
    shard = next(iter(tiny_dataset.rows_by_shard()))
    (_, first), (_, second) = list(iter_shard(tiny_dataset.shard_uri(shard)))[:2]
    cache = DecodedClipCache(budget_bytes=decode_clip(first).nbytes)  # room for one clip
    for mp4 in (first, second, first, second):
        cache.frames(mp4)
    assert (cache.decodes, cache.hits) == (3, 1)  # the first clip stayed, the second never fit
    assert np.array_equal(cache.frames(second), decode_clip(second))
