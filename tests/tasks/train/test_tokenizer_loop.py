"""The tokenizer loop alone (no Ray, no MLflow): its events, reports and result."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.data.datasets import DatasetRef
from tasks.storage import StorageSettings
from tasks.train.checkpoints import latest_checkpoint
from tasks.train.events import CheckpointEvent, MetricsEvent, SampleEvent, TrainingEvent
from tasks.train.tokenizer_loop import TrainingResult, TrainingSpec, learning_rate, run_training
from tasks.train.worker import WorkerContext
from tests.tasks.train.conftest import tiny_training


def test_rank_0_publishes_typed_events_and_returns_a_typed_result(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    events: list[TrainingEvent] = []
    reports: list[dict[str, float]] = []
    spec = TrainingSpec(
        training=tiny_training(resolution=16, frames=5, batch_size=1),
        storage=StorageSettings(),
        dataset=tiny_dataset,
        run_dir=str(tmp_path / "run"),
    )
    result = run_training(spec, WorkerContext(publish=events.append, report=reports.append))

    assert isinstance(result, TrainingResult)
    assert (result.final_step, result.steps_trained, result.resumed_from_step) == (4, 4, 0)
    assert result.checkpoint == latest_checkpoint(spec.run_dir)
    assert [type(e) for e in events] == [MetricsEvent, SampleEvent, CheckpointEvent] * 2
    assert [e.step for e in events] == [2, 2, 2, 4, 4, 4]
    metrics = [e for e in events if isinstance(e, MetricsEvent)]
    assert {"psnr_db", "ssim", "lr", "clips_per_s", "loss/reconstruction"} <= set(
        metrics[0].metrics
    )
    assert result.metrics == metrics[-1].metrics
    samples = [e for e in events if isinstance(e, SampleEvent)]
    assert all(Path(e.uri).is_file() and e.artifact_dir == "samples" for e in samples)
    checkpoints = [e for e in events if isinstance(e, CheckpointEvent)]
    assert checkpoints[-1].uri == result.checkpoint
    # Every rank reports the same windows to Ray, with the step.
    assert [r["step"] for r in reports] == [2, 4]


def test_a_rank_other_than_0_publishes_nothing_and_returns_none(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    events: list[TrainingEvent] = []
    spec = TrainingSpec(
        training=tiny_training(resolution=16, frames=5, batch_size=1, steps=2),
        storage=StorageSettings(),
        dataset=tiny_dataset,
        run_dir=str(tmp_path / "run"),
    )
    # world_size 2 without a process group: the loop runs undistributed, as rank 1 would.
    worker = WorkerContext(rank=1, world_size=2, publish=events.append)
    assert run_training(spec, worker) is None
    assert events == [] and latest_checkpoint(spec.run_dir) is None


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [("constant", 0, 0.5), ("constant", 9, 1.0), ("cosine", 2, 1.0), ("cosine", 12, 0.1)],
)
def test_learning_rate_warms_up_then_follows_the_schedule(schedule, step, expected) -> None:
    config = tiny_training(steps=12, warmup_steps=2, lr_schedule=schedule, min_lr_ratio=0.1, lr=1.0)
    assert learning_rate(config, step, 1.0) == pytest.approx(expected)
