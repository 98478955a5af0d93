"""Module-level task functions for SupervisedPool tests (spawned workers import them by name)."""

from __future__ import annotations

import os
import signal
import time


def behave(command: str) -> str:
    """Return, raise, crash or hang, as the command says."""
    if command == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if command == "hang":
        time.sleep(3600)
    if command == "raise":
        raise ValueError("bad item")
    return command.upper()


def fail_to_start() -> None:
    """An initializer that dies, as a worker with a broken environment would."""
    os._exit(3)
