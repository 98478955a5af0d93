"""The tokenizer loop alone (no Ray, no MLflow): its events, reports and result."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks.data.datasets import DatasetRef
from tasks.storage import StorageSettings
from tasks.train.checkpoints import latest_checkpoint, load_checkpoint
from tasks.train.events import CheckpointEvent, MetricsEvent, SampleEvent, TrainingEvent
from tasks.train.tokenizer_loop import TrainingResult, TrainingSpec, learning_rate, run_training
from tasks.train.worker import WorkerContext
from tests.tasks.train.conftest import small_window_training, tiny_training


def test_rank_0_publishes_typed_events_and_returns_a_typed_result(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    events: list[TrainingEvent] = []
    reports: list[dict[str, float]] = []
    spec = TrainingSpec(
        training=small_window_training(),
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
        training=small_window_training(steps=2),
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


def test_time_budget_ends_the_run_and_a_rerun_with_more_time_continues_it(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    def spec(minutes: float) -> TrainingSpec:
        cadence = {"checkpoint_every": 10_000, "log_every": 10_000, "sample_every": 10_000}
        training = small_window_training(steps=10_000, max_minutes=minutes, **cadence)
        return TrainingSpec(
            training=training,
            storage=StorageSettings(),
            dataset=tiny_dataset,
            run_dir=str(tmp_path / "run"),
        )

    events: list[TrainingEvent] = []
    first = run_training(spec(0.02), WorkerContext(publish=events.append))  # 1.2 s
    assert 1 <= first.final_step < 10_000 and first.steps_trained == first.final_step
    # The stop is a full end of run: metrics, a sample and a checkpoint at the last step.
    assert [e.step for e in events] == [first.final_step] * 3
    assert events[0].metrics["budget_fraction"] >= 1.0
    saved = load_checkpoint(first.checkpoint)
    assert saved.step == first.final_step and saved.metadata["budget_seconds_spent"] >= 1.2

    again = run_training(spec(0.02))  # the same budget is spent: nothing more to train
    assert again.steps_trained == 0 and again.final_step == first.final_step
    more = run_training(spec(0.04), WorkerContext(publish=events.append))
    assert more.resumed_from_step == first.final_step and more.steps_trained >= 1
    assert more.final_step == first.final_step + more.steps_trained


def test_learning_rate_decays_over_whichever_of_steps_and_time_binds_first() -> None:
    config = tiny_training(steps=100, warmup_steps=2, min_lr_ratio=0.1, lr=1.0, max_minutes=5)
    assert learning_rate(config, 0, 1.0, time_fraction=0.9) == pytest.approx(0.5)  # warm-up
    assert learning_rate(config, 2, 1.0, time_fraction=0.5) == pytest.approx(0.55)  # mid-cosine
    assert learning_rate(config, 2, 1.0, time_fraction=1.0) == pytest.approx(0.1)
    assert learning_rate(config, 51, 1.0, time_fraction=0.1) == pytest.approx(0.55)  # steps bind


def test_the_budget_counts_from_the_jobs_start_and_start_up_is_reported(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    # A job that began 3 s before its loop (as Ray's start-up would) with a 3.6 s budget.
    spec = TrainingSpec(
        training=small_window_training(steps=10_000, max_minutes=0.06, log_every=10_000),
        storage=StorageSettings(),
        dataset=tiny_dataset,
        run_dir=str(tmp_path / "run"),
        started_at=time.time() - 3.0,
    )
    result = run_training(spec)
    assert result.startup_seconds >= 3.0
    assert result.train_seconds < 3.0  # the loop got what start-up left (0.6 s), not 3.6 s
