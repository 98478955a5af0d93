"""fit_on_ray alone, with a loop that is not the tokenizer's: ranks, events, the return value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.ray_runtime import RayConfig
from tasks.train.events import MetricsEvent, TrainingEvent
from tasks.train.ray_driver import WorkerGroup, fit_on_ray
from tasks.train.worker import WorkerContext

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


@dataclass(frozen=True)
class CountConfig:
    """The toy loop's config: how many steps, and whether rank 0 returns its result."""

    steps: int
    answer: bool = True


@dataclass(frozen=True)
class CountResult:
    world_size: int
    mean_rank: float
    device: str


def count_loop(config: CountConfig, worker: WorkerContext) -> CountResult | None:
    """Every rank averages its rank over the group each step; rank 0 publishes and returns."""
    mean = 0.0
    for step in range(1, config.steps + 1):
        mean = worker.mean({"rank": float(worker.rank)})["rank"]
        worker.report({"step": step, "rank": mean})
        if worker.rank == 0:
            worker.publish(MetricsEvent(step=step, metrics={"mean_rank": mean}))
    if worker.rank != 0 or not config.answer:
        return None
    return CountResult(worker.world_size, mean, str(worker.device))


def test_a_generic_loop_runs_on_two_workers_and_streams_rank_0s_events(tmp_path: Path) -> None:
    events: list[TrainingEvent] = []
    result = fit_on_ray(
        count_loop,
        CountConfig(steps=3),
        WorkerGroup(num_workers=2),
        RayConfig(num_cpus=2),
        events.append,
        run_name="arvid-test-count",
        storage_path=str(tmp_path / "ray"),
        poll_s=0.05,
    )
    assert result == CountResult(world_size=2, mean_rank=0.5, device="cpu")
    assert events == [MetricsEvent(step=s, metrics={"mean_rank": 0.5}) for s in (1, 2, 3)]


def test_a_loop_whose_rank_0_returns_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="arvid-test-silent: rank 0 .* returned no result"):
        fit_on_ray(
            count_loop,
            CountConfig(steps=1, answer=False),
            WorkerGroup(num_workers=1),
            RayConfig(num_cpus=2),
            lambda event: None,
            run_name="arvid-test-silent",
            storage_path=str(tmp_path / "ray"),
        )
