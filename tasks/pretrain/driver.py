"""Run one pretraining stage on Ray Train workers (DDP over gloo on CPUs, nccl on GPUs)."""

from __future__ import annotations

import uuid

from tasks.pretrain.loop import StageResult, StageSpec, run_stage
from tasks.ray_runtime import RayConfig
from tasks.train.events import EventSink
from tasks.train.ray_driver import WorkerGroup, fit_on_ray, ray_storage_path


def fit_stage(
    spec: StageSpec, workers: WorkerGroup, ray_config: RayConfig, on_event: EventSink
) -> StageResult:
    """Train `spec` on Ray Train workers, feeding rank 0's events to `on_event` as they come."""
    return fit_on_ray(
        run_stage,
        spec,
        workers,
        ray_config,
        on_event,
        run_name=f"arvid-pretrain-{spec.stage.name}-{uuid.uuid4().hex[:8]}",
        storage_path=ray_storage_path(spec.run_dir),
    )
