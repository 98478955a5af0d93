"""The time budget: every worker of a process group reads rank 0's clock."""

from __future__ import annotations

import socket
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tasks.train.budget import TimeBudget, schedule_progress
from tasks.train.worker import WorkerContext


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # Rank 0 began 30 s ago, rank 1 just now: rank 1 must still see half the budget spent.
        started = time.time() - (30.0 if rank == 0 else 0.0)
        budget = TimeBudget(seconds=60.0, started=started)
        results[rank] = budget.fraction(WorkerContext(rank=rank, world_size=2))
    finally:
        dist.destroy_process_group()


def test_every_worker_reads_rank_0s_share_of_the_budget() -> None:
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
    assert results[0] == results[1] == pytest.approx(0.5, abs=0.05)


def test_no_budget_is_never_spent_and_progress_follows_the_nearer_limit() -> None:
    assert TimeBudget.of_minutes(None).fraction() == 0.0
    spent = TimeBudget.of_minutes(1.0, started=time.time() - 90, spent_before=30)
    assert spent.fraction() == pytest.approx(2.0, abs=0.01)
    assert schedule_progress(10, 100, 0.5) == 0.5
    assert schedule_progress(80, 100, 0.5) == 0.8
    assert schedule_progress(10, 100, 3.0) == 1.0
