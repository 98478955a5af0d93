"""A pool of long-lived worker processes in which a hung or crashed task costs only that task.

`concurrent.futures.ProcessPoolExecutor` turns one segfaulting worker into `BrokenProcessPool`
for every pending task, and cannot time out a single task. Decoders of untrusted video do both
(decord segfaults on some truncated files and can deadlock on broken containers), so each worker
here is supervised on its own: past the deadline it is killed, if it dies it is replaced, and the
task it held comes back as a `TaskFailure`.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class TaskFailure:
    """Why a task produced no result: it timed out, its worker crashed, or it raised."""

    kind: Literal["timeout", "crashed", "error"]
    message: str


def _worker_main(
    fn: Callable[[Any], Any],
    conn: Connection,
    initializer: Callable[..., None] | None,
    initargs: tuple,
) -> None:
    # Workers ignore Ctrl-C; the parent decides when they stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        task_id, item = message
        try:
            outcome: tuple[str, Any] = ("ok", fn(item))
        except Exception as exc:  # noqa: BLE001 - a task's exception is data for the parent
            outcome = ("error", f"{type(exc).__name__}: {exc}")
        conn.send((task_id, outcome))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task_id: int | None = None
    deadline: float = 0.0


class WorkerStartupError(RuntimeError):
    """A worker died before it could take work: an environment problem, not a bad input."""


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class SupervisedPool(Generic[T, R]):
    """Run `fn` over items in `workers` processes, each task with its own timeout."""

    def __init__(
        self,
        fn: Callable[[T], R],
        workers: int,
        timeout_s: float,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        start_method: str = "spawn",
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.fn = fn
        self.size = workers
        self.timeout_s = timeout_s
        self.initializer = initializer
        self.initargs = initargs
        # spawn, not fork: the parent holds threads (Prefect, boto3) that fork would copy mid-state.
        self.context = mp.get_context(start_method)
        self.workers: list[_Worker] = []
        self.restarts = 0
        self.startup_timeout_s = startup_timeout_s

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main,
            args=(self.fn, child_conn, self.initializer, self.initargs),
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(process=process, conn=parent_conn)

    def _await_ready(self, worker: _Worker) -> _Worker:
        # Without this handshake a worker that cannot even import would be blamed on every input.
        ready = wait([worker.conn, worker.process.sentinel], self.startup_timeout_s)
        if worker.conn in ready:
            try:
                if worker.conn.recv() == ("ready", None):
                    return worker
            except (EOFError, OSError):
                pass
        worker.process.kill()
        worker.process.join(timeout=5)
        raise WorkerStartupError(
            f"worker process failed to start ({_exit_description(worker.process.exitcode)}); "
            "see its traceback above"
        )

    def _start_worker(self) -> _Worker:
        return self._await_ready(self._spawn())

    def _replace(self, worker: _Worker) -> _Worker:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        self.restarts += 1
        fresh = self._start_worker()
        self.workers[self.workers.index(worker)] = fresh
        return fresh

    def __enter__(self) -> SupervisedPool[T, R]:
        spawned = [self._spawn() for _ in range(self.size)]  # start together, then wait for each
        try:
            self.workers = [self._await_ready(worker) for worker in spawned]
        except WorkerStartupError:
            for worker in spawned:
                worker.process.kill()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        self.workers = []

    def imap_unordered(self, items: Iterable[T]) -> Iterator[tuple[T, R | TaskFailure]]:
        """Yield (item, result or TaskFailure) as tasks finish, in completion order."""
        if not self.workers:
            raise RuntimeError("SupervisedPool must be used as a context manager")
        pending = iter(enumerate(items))
        held: dict[int, T] = {}
        exhausted = False
        while True:
            for worker in self.workers:
                if worker.task_id is None and not exhausted:
                    try:
                        task_id, item = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    held[task_id] = item
                    worker.task_id = task_id
                    worker.deadline = time.monotonic() + self.timeout_s
                    worker.conn.send((task_id, item))
            busy = [w for w in self.workers if w.task_id is not None]
            if not busy:
                return
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
            for worker in busy:
                task_id = worker.task_id
                if worker.conn in ready:
                    try:
                        done_id, (status, payload) = worker.conn.recv()
                    except (EOFError, OSError):
                        worker.process.join(timeout=5)
                        failure = TaskFailure(
                            "crashed", f"worker {_exit_description(worker.process.exitcode)}"
                        )
                        self._replace(worker)
                        yield held.pop(task_id), failure
                        continue
                    worker.task_id = None
                    item = held.pop(done_id)
                    yield item, (payload if status == "ok" else TaskFailure("error", payload))
                elif worker.process.sentinel in ready:
                    worker.process.join(timeout=5)
                    failure = TaskFailure(
                        "crashed", f"worker {_exit_description(worker.process.exitcode)}"
                    )
                    self._replace(worker)
                    yield held.pop(task_id), failure
                elif time.monotonic() >= worker.deadline:
                    self._replace(worker)
                    yield (
                        held.pop(task_id),
                        TaskFailure(
                            "timeout", f"no result after {self.timeout_s:g} s; worker killed"
                        ),
                    )
