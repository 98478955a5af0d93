"""The promotion lock on a local file and on a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tasks import storage
from tasks.promote.lock import LockLost, LockTimeout, hold_lock


@pytest.fixture(params=["local", "s3"])
def lock_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "locks" / "promote.lock")
    return f"s3://{request.getfixturevalue('s3_env')}/locks/promote.lock"


def test_a_held_lock_admits_one_holder_at_a_time(lock_uri: str) -> None:
    inside, most, entered = [0], [0], []
    guard = threading.Lock()

    def work(worker: int) -> None:
        for round_ in range(3):
            with hold_lock(lock_uri, timeout_s=60, stale_after_s=300, purpose="test"):
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.02)  # long enough for a second holder to show up if it could
                with guard:
                    inside[0] -= 1
                    entered.append((worker, round_))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and len(entered) == 12


def test_a_waiter_gives_up_after_the_timeout_naming_the_holder(lock_uri: str) -> None:
    with hold_lock(lock_uri, timeout_s=5, stale_after_s=300, purpose="promote first"):
        started = time.monotonic()
        with pytest.raises(LockTimeout) as error:
            with hold_lock(lock_uri, timeout_s=0.3, stale_after_s=300, purpose="second"):
                pass
        assert time.monotonic() - started < 5
    message = str(error.value)
    assert message.startswith(f"{lock_uri}: still locked after 0.3 s")
    assert f"promote first by pid {os.getpid()} on {socket.gethostname()}" in message
    with hold_lock(lock_uri, timeout_s=1, stale_after_s=300, purpose="after release"):
        pass


def test_a_local_lock_dies_with_its_holder(tmp_path: Path) -> None:
    uri = str(tmp_path / "promote.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from tasks.promote.lock import hold_lock\n"
            f"with hold_lock({uri!r}, 5, 300, 'doomed'):\n"
            "    print('held', flush=True); time.sleep(120)\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout, match="doomed by pid"):
            with hold_lock(uri, timeout_s=0.2, stale_after_s=300, purpose="waiter"):
                pass
        holder.kill()
        holder.wait(timeout=10)
        with hold_lock(uri, timeout_s=2, stale_after_s=300, purpose="successor"):
            pass
    finally:
        holder.kill()


def test_a_stale_s3_lock_is_taken_over_and_its_old_holder_finds_out(s3_env: str) -> None:
    uri = f"s3://{s3_env}/locks/promote.lock"
    with ExitStack() as first:
        old = first.enter_context(hold_lock(uri, timeout_s=1, stale_after_s=1, purpose="slow"))
        time.sleep(2.5)  # the server's clock, at whole seconds, must see it older than 1 s
        with hold_lock(uri, timeout_s=10, stale_after_s=1, purpose="successor") as new:
            with pytest.raises(LockLost, match="taken over while held"):
                old.verify()
            new.verify()
            first.close()  # the old holder's release must leave the successor's lock alone
            assert storage.exists(uri)
            new.verify()
    assert not storage.exists(uri)
