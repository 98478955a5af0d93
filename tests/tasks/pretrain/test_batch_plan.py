import numpy as np
import pytest

from tasks.pretrain.batch_plan import BatchPlan


def test_two_workers_cover_every_clip_once_per_epoch_with_no_overlap():
    plan = BatchPlan(num_clips=24, global_batch_size=6, world_size=2, seed=3)
    for epoch in range(3):
        seen = []
        for step in range(epoch * 4, epoch * 4 + 4):  # 24 clips / 6 per step = 4 steps an epoch
            a, b = plan.worker_batch(step, 0), plan.worker_batch(step, 1)
            assert len(a) == len(b) == 3
            assert not set(a) & set(b)
            seen.extend([*a, *b])
        assert sorted(seen) == list(range(24))


def test_batches_that_straddle_epochs_keep_each_epoch_whole():
    plan = BatchPlan(num_clips=10, global_batch_size=4, world_size=1, seed=0)
    stream = np.concatenate([plan.global_batch(s) for s in range(10)])  # 40 items = 4 epochs
    for epoch in range(4):
        assert sorted(stream[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
        assert np.array_equal(stream[epoch * 10 : (epoch + 1) * 10], plan.epoch_order(epoch))


def test_the_plan_is_a_function_of_seed_and_step_alone():
    first = BatchPlan(num_clips=50, global_batch_size=8, world_size=2, seed=7)
    again = BatchPlan(num_clips=50, global_batch_size=8, world_size=2, seed=7)
    other = BatchPlan(num_clips=50, global_batch_size=8, world_size=2, seed=8)
    assert np.array_equal(first.worker_batch(17, 1), again.worker_batch(17, 1))
    assert not np.array_equal(first.epoch_order(0), other.epoch_order(0))
    assert not np.array_equal(first.epoch_order(0), first.epoch_order(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clips": 0, "global_batch_size": 2}, "holds no clips"),
        ({"num_clips": 9, "global_batch_size": 3, "world_size": 2}, "multiple of 2"),
        ({"num_clips": 9, "global_batch_size": 1, "world_size": 2}, "cannot be split evenly"),
    ],
)
def test_plans_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPlan(**kwargs)
