"""Run a training loop on Ray Train workers and stream rank 0's events back to the driver.

    driver: fit_on_ray(train_func, loop_config, workers, ...)      Ray Train workers (TorchTrainer)
      ensure_ray, start TorchTrainer.fit() in a thread   ──────▶    WorkerContext from ray.train's
      drain the event queue into on_event while it runs  ◀─queue──  public context; train_func(
      return rank 0's return value                                   loop_config, worker)

Any loop with the signature `train_func(loop_config, worker) -> result | None` runs here: the
tokenizer loop today, a generator pretraining loop next. Only public Ray APIs are used
(`ray.train.get_context`, `ray.train.report`, `ray.train.torch.get_device`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tasks import storage
from tasks.ray_runtime import RayConfig, ensure_ray, worker_env
from tasks.train.events import EventSink
from tasks.train.worker import WorkerContext

LoopConfig = TypeVar("LoopConfig")
Result = TypeVar("Result")
TrainFunc = Callable[[LoopConfig, WorkerContext], Result | None]

# Ray Train logs every report (all metrics, every rank) at INFO with this prefix, on a logger
# that LoggingConfig's level does not reach; the metrics reach MLflow through the event queue.
_REPORT_LINE = "Reporting training result"


@dataclass(frozen=True)
class WorkerGroup:
    """How many Ray Train workers, on GPUs or not, and how many group restarts Ray may do."""

    num_workers: int
    use_gpu: bool = False
    max_failures: int = 0  # each restart runs train_func again: the loop resumes from a checkpoint


@dataclass(frozen=True)
class _WorkerPayload(Generic[LoopConfig]):
    """What every worker receives: the loop, its config, and the queue for rank 0's events."""

    train_func: Callable[[Any, WorkerContext], Any]
    loop_config: LoopConfig
    events: Any  # ray.util.queue.Queue


class _DropReportLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_REPORT_LINE)


def _quiet_report_lines() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _DropReportLines) for f in handler.filters):
            handler.addFilter(_DropReportLines())


def ray_worker_context(events: Any) -> WorkerContext:
    """This Ray Train worker's context: rank, world size and device from Ray's public API."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    return WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        publish=events.put,
        report=ray.train.report,
    )


def _run_worker(train_loop_config: dict[str, _WorkerPayload]) -> Any:
    """Ray Train entry point: build this worker's context, then run the loop."""
    _quiet_report_lines()
    payload = train_loop_config["payload"]
    return payload.train_func(payload.loop_config, ray_worker_context(payload.events))


def ray_storage_path(checkpoint_dir: str) -> str | None:
    """Where Ray Train keeps its bookkeeping: beside local checkpoints, else Ray's default.

    No arvid checkpoint goes through Ray's store; they are written through tasks.storage.
    """
    if storage.is_s3(checkpoint_dir):
        return None
    return str(Path(checkpoint_dir).resolve() / "ray")


def fit_on_ray(
    train_func: TrainFunc[LoopConfig, Result],
    loop_config: LoopConfig,
    workers: WorkerGroup,
    ray_config: RayConfig,
    on_event: EventSink,
    *,
    run_name: str,
    storage_path: str | None = None,
    poll_s: float = 0.5,
) -> Result:
    """Run `train_func` on Ray Train workers, feeding rank 0's events to `on_event` as they come.

    Returns rank 0's return value; RuntimeError if it returned None.
    """
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    ensure_ray(ray_config)
    events = Queue(actor_options={"num_cpus": 0})  # a mailbox, it must not take a worker's CPU
    payload = _WorkerPayload(train_func=train_func, loop_config=loop_config, events=events)
    trainer = TorchTrainer(
        _run_worker,
        train_loop_config={"payload": payload},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers.num_workers, use_gpu=workers.use_gpu
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=workers.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            # Forwarded: the S3 endpoint and tracking URI (credentials come from the nodes themselves).
            worker_runtime_env={"env_vars": worker_env(ray_config)},
        ),
    )

    def drain() -> None:
        while True:
            try:
                event = events.get_nowait()
            except Empty:
                return
            on_event(event)

    try:
        # fit() blocks; in a thread it leaves this one free to log events while training runs.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-fit") as pool:
            future = pool.submit(trainer.fit)
            while not future.done():
                drain()
                time.sleep(poll_s)
            result = future.result()
        drain()
    finally:
        events.shutdown()
    if result.return_value is None:
        raise RuntimeError(f"{run_name}: rank 0 of the training loop returned no result")
    return result.return_value
