"""Where one copy of a training loop runs: rank, world size, device, and how it reports.

The loop only talks to this context, never to Ray, so the same loop runs inside a Ray Train
worker (`ray_driver.fit_on_ray` builds the context there), in a plain process (world size 1), or
in a test that passes its own `publish` and `report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from tasks.train.events import EventSink, ignore_event


def _ignore_metrics(metrics: dict[str, float]) -> None:
    return None


@dataclass
class WorkerContext:
    """Rank, world size and device of one loop copy; `publish` carries rank 0's events."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    publish: EventSink = ignore_event  # rank 0's events for the driver
    report: Callable[[dict[str, float]], None] = _ignore_metrics  # every rank, same steps

    @property
    def distributed(self) -> bool:
        """True when the loop runs in a process group of more than one worker."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP-wrap a module when distributed (gradients all-reduced in backward)."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over the workers (every worker calls it with the same keys)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (itself when not wrapped)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
