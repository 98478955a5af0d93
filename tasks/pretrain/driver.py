"""Run one pretraining stage on Ray Train workers (DDP over gloo on CPUs, nccl on GPUs)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.pretrain.loop import Event, StageResult, StageSpec, WorkerContext, run_stage
from tasks.ray_runtime import RayConfig, ensure_ray, worker_env


def stage_worker(loop_config: dict[str, Any]) -> StageResult | None:
    """Ray Train entry point: this worker's context, then the stage loop."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    worker = WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        publish=loop_config["events"].put,
    )
    return run_stage(loop_config["spec"], worker)


def _ray_storage_path(run_dir: str) -> str | None:
    # Ray Train's own bookkeeping goes beside local checkpoints (arvid's never go through it).
    return None if storage.is_s3(run_dir) else str(Path(run_dir).resolve() / "ray")


def fit_stage(
    spec: StageSpec,
    num_workers: int,
    use_gpu: bool,
    max_failures: int,
    ray_config: RayConfig,
    on_event: Callable[[Event], None],
) -> StageResult:
    """Train `spec` on `num_workers` Ray Train workers, feeding rank 0's events to `on_event`."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    ensure_ray(ray_config)
    events = Queue(actor_options={"num_cpus": 0})  # a mailbox: it must not take a worker's CPU
    trainer = TorchTrainer(
        stage_worker,
        train_loop_config={"spec": spec, "events": events},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=f"arvid-pretrain-{spec.stage.name}-{uuid.uuid4().hex[:8]}",
            storage_path=_ray_storage_path(spec.run_dir),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": worker_env(ray_config)},
        ),
    )

    def drain() -> None:
        while True:
            try:
                on_event(events.get_nowait())
            except Empty:
                return

    logging.getLogger("arvid.pretrain").info(
        "stage %s on %d Ray worker(s)", spec.stage.name, num_workers
    )
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-fit") as pool:
            future = pool.submit(trainer.fit)
            while not future.done():
                drain()
                time.sleep(0.5)
            result = future.result()
        drain()
    finally:
        events.shutdown()
    if result.return_value is None:
        raise RuntimeError(f"stage {spec.stage.name}: rank 0 returned no result")
    return result.return_value
