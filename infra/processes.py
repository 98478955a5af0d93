"""Service processes for the local stack: free loopback ports, launch in a process group, stop it.

Every service runs in its own session (process group), so stopping it stops whatever it spawned
(Ray's raylet and workers, uvicorn's workers), and a Ctrl-C in the caller's terminal reaches none
of them.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Ports drawn below Linux's ephemeral range (32768+), where client sockets would collide.
_PORT_RANGE = (10000, 32000)


class StackError(RuntimeError):
    """A service of the local stack could not be started, reached or stopped."""


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether `port` can be bound on `host` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(
    count: int, *, offset: int | None = None, taken: set[int] | None = None
) -> list[int]:
    """`count` distinct free loopback ports (each with port + `offset` free too, if given)."""
    taken = set(taken or ())
    chosen: list[int] = []
    rng = random.Random()
    low, high = _PORT_RANGE
    if offset:
        high -= offset
    for _ in range(5000):
        port = rng.randrange(low, high)
        wanted = {port} | ({port + offset} if offset else set())
        if wanted & taken or not all(port_free(p) for p in wanted):
            continue
        chosen.append(port)
        taken |= wanted
        if len(chosen) == count:
            return chosen
    raise StackError(f"no {count} free loopback ports found in {low}..{high}")


def free_port_block(size: int, taken: set[int]) -> int:
    """The first port of `size` consecutive free loopback ports (Ray's worker port range)."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - size)
        block = set(range(start, start + size))
        if not block & taken and all(port_free(p) for p in block):
            taken |= block
            return start
    raise StackError(f"no block of {size} free loopback ports found")


def launch(
    args: list[str],
    log_path: Path,
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    user: int | None = None,
) -> int:
    """Start `args` in a new session writing to `log_path`; returns its pid (= process group id)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
        )
    return process.pid


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie child counts as gone)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall through to the signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(alive(pid) for pid in group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """The pids whose process group is `pgid` (read from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def stop_group(pgid: int, first_signal: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Signal process group `pgid`, wait up to `timeout` s for it to go, then SIGKILL what is left."""
    for sig, wait in ((first_signal, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.1)
    if group_alive(pgid):
        raise StackError(f"process group {pgid} survived SIGKILL")


def wait_until(
    what: str,
    ready: Callable[[], bool],
    timeout: float,
    pgid: int | None = None,
    log_path: Path | None = None,
) -> float:
    """Poll `ready` until it returns True; returns the seconds waited, or raises naming `what`."""
    started = time.monotonic()
    last = "not ready"
    while time.monotonic() - started < timeout:
        if pgid is not None and not group_alive(pgid):
            raise StackError(f"{what} exited during start-up\n{log_tail(log_path)}")
        try:
            if ready():
                return time.monotonic() - started
        except Exception as exc:  # any failure of a probe just means "not yet"
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    raise StackError(
        f"{what} was not ready within {timeout:.0f} s (last probe: {last})\n{log_tail(log_path)}"
    )


def log_tail(log_path: Path | None, lines: int = 30) -> str:
    """The last lines of a service log, for error messages."""
    if log_path is None or not log_path.exists():
        return "(no log)"
    text = log_path.read_text(errors="replace").replace("\x00", "")
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return f"--- {log_path} (last {len(tail)} lines) ---\n" + "\n".join(tail)
