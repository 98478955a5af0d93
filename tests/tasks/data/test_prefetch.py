"""The background batch prefetcher: same items in the same order, errors where they belong, and a
thread that stops when the loop lets go of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tasks.data.prefetch import Prefetcher


def test_yields_every_item_in_order_then_stops() -> None:
    items = list(Prefetcher(iter(range(50)), depth=3))
    assert items == list(range(50))


def test_an_error_reaches_the_consumer_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("shard-7.tar: truncated")

    stream = Prefetcher(source(), depth=4)
    assert next(stream) == 1
    assert next(stream) == 2
    with pytest.raises(ValueError, match="shard-7.tar"):
        next(stream)
    with pytest.raises(StopIteration):  # a failed stream stays finished
        next(stream)


def test_close_stops_an_endless_source_whose_queue_is_full() -> None:
    produced = 0

    def endless() -> Iterator[int]:
        nonlocal produced
        while True:
            produced += 1
            yield produced

    stream = Prefetcher(endless(), depth=2, name="endless-test")
    assert next(stream) == 1
    time.sleep(0.2)  # the thread fills the queue and blocks on it
    stream.close()
    assert not any(t.name == "endless-test" for t in threading.enumerate())
    seen = produced
    time.sleep(0.2)
    assert produced == seen  # nothing drawn after close
    with pytest.raises(StopIteration):
        next(stream)


def test_keeps_at_most_depth_items_ahead() -> None:
    produced = 0

    def counting() -> Iterator[int]:
        nonlocal produced
        for i in range(100):
            produced += 1
            yield i

    stream = Prefetcher(counting(), depth=3)
    next(stream)
    time.sleep(0.2)
    # One consumed, three queued, and one drawn that waits for room in the queue.
    assert produced <= 5
    stream.close()


def test_rejects_a_depth_below_one() -> None:
    with pytest.raises(ValueError, match="depth 0"):
        Prefetcher(iter([]), depth=0)
