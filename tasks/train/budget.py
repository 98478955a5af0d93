"""A wall-time training budget that every worker of a run agrees on, and the schedule over it.

A run given `max_minutes` stops when that much wall time is spent (or at its step limit, whichever
comes first) and spreads its learning-rate schedule over whichever of the two limits binds first:
progress = max(step / steps, seconds spent / budget). Without a budget, progress is step / steps
alone, so a run is exactly reproducible. Workers read rank 0's clock (one broadcast of one number
per check), so they stop at the same step and set the same learning rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tasks.train.worker import WorkerContext


@dataclass
class TimeBudget:
    """`seconds` of wall time (None: no budget), counted from `started` (time.time()), plus what
    earlier calls of a resumed run already spent."""

    seconds: float | None
    started: float = field(default_factory=time.time)
    spent_before: float = 0.0

    @classmethod
    def of_minutes(
        cls, minutes: float | None, started: float | None = None, spent_before: float = 0.0
    ) -> TimeBudget:
        """A budget of `minutes` (None: unbounded) that began at `started` (default: now)."""
        return cls(
            seconds=None if minutes is None else minutes * 60.0,
            started=time.time() if started is None else started,
            spent_before=spent_before,
        )

    def spent(self) -> float:
        """Seconds spent so far, earlier calls of the run included (this worker's clock)."""
        return self.spent_before + time.time() - self.started

    def fraction(self, worker: WorkerContext | None = None) -> float:
        """Share of the budget spent (0 without one), rank 0's figure on every worker; >= 1 means
        stop. Every worker must call it at the same points (it is a collective when distributed)."""
        if self.seconds is None:
            return 0.0
        value = self.spent() / self.seconds
        if worker is not None and worker.distributed:
            agreed = torch.tensor([value], dtype=torch.float64, device=worker.device)
            dist.broadcast(agreed, src=0)
            value = float(agreed.item())
        return value


def schedule_progress(step: int, steps: int, time_fraction: float) -> float:
    """How far through its schedule a run is, in [0, 1]: the nearer of its step and time limits."""
    return min(1.0, max(step / max(1, steps), time_fraction))
