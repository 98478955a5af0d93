"""SupervisedPool: a crashed, hung or raising task costs only itself."""

from __future__ import annotations

import pytest

from tasks.ingest.workers import SupervisedPool, TaskFailure, WorkerStartupError
from tests.support.pool_tasks import behave, fail_to_start


def test_crash_hang_and_error_cost_only_their_own_task() -> None:
    items = ["a", "crash", "b", "hang", "c", "raise", "d"]
    with SupervisedPool(behave, workers=2, timeout_s=3.0) as pool:
        outcomes = dict(pool.imap_unordered(items))
        restarts = pool.restarts
    assert {k: v for k, v in outcomes.items() if not isinstance(v, TaskFailure)} == {
        "a": "A",
        "b": "B",
        "c": "C",
        "d": "D",
    }
    assert outcomes["crash"].kind == "crashed" and "SIGSEGV" in outcomes["crash"].message
    assert outcomes["hang"].kind == "timeout"
    assert outcomes["raise"].kind == "error" and "bad item" in outcomes["raise"].message
    assert restarts == 2


def test_worker_that_cannot_start_aborts_instead_of_blaming_inputs() -> None:
    with pytest.raises(WorkerStartupError, match="exited with code 3"):
        with SupervisedPool(behave, workers=1, timeout_s=5.0, initializer=fail_to_start) as pool:
            list(pool.imap_unordered(["a"]))
