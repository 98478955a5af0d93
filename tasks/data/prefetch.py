"""Prepare a loop's next batches on a background thread while the current step computes.

Synchronous data-parallel workers step in lock-step: each step lasts as long as the slowest
worker's, and a worker that has to decode a new video or open its next shard makes the other
wait idle in the gradient all-reduce. A thread that keeps a few batches ready does that work in
those waits instead (decoding and torch's resize release the GIL), so the compute thread rarely
waits for data. Errors raised while producing a batch reach the consumer at the batch they
belong to, and `close()` stops the thread when a loop switches to another stream.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()  # the source is exhausted


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """Iterate `source` on a daemon thread, keeping up to `depth` items ready."""

    def __init__(self, source: Iterator[T], depth: int = 2, name: str = "prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth {depth}: must be at least 1")
        self._ready: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._fill, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        """Queue `item` unless the consumer closed us first; False when closed."""
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failure(error))
            return
        self._put(_END)

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._ready.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread (it finishes the item it is producing, then exits)."""
        self._stop.set()
        self._done = True
        while True:  # unblock a producer waiting on a full queue
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)
