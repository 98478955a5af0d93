"""Tokenizer actor classes for fault-injection tests (Ray workers import this module by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import ClassVar

from tasks.tokenize.workers import DecodedBatch, EncodedBatch, TokenizerWorker


class CrashingTokenizerWorker(TokenizerWorker):
    """Exits its process abruptly on a batch holding `victim`, up to `times` times in all.

    The marker file counts the deaths across actor restarts and processes. Configure it with
    `crashing_worker`, which returns a subclass carrying the settings.
    """

    victim: ClassVar[str] = ""
    marker: ClassVar[str] = ""
    times: ClassVar[int] = 1

    def encode(self, batch: DecodedBatch) -> EncodedBatch:
        """Die as configured, else encode as the real worker does."""
        if self.victim in batch.keys:
            marker = Path(self.marker)
            crashes = int(marker.read_text()) if marker.exists() else 0
            if crashes < self.times:
                marker.write_text(str(crashes + 1))
                os._exit(1)
        return super().encode(batch)


def crashing_worker(victim: str, marker: Path, times: int) -> type[TokenizerWorker]:
    """A tokenizer actor class whose process dies `times` times on the batch holding `victim`."""
    settings = {"victim": victim, "marker": str(marker), "times": times}
    # Built here, so Ray ships it by value; its base is imported by name in the actor.
    return type("CrashingTokenizerWorker", (CrashingTokenizerWorker,), settings)


class StallingTokenizerWorker(TokenizerWorker):
    """Hangs on a batch holding `victim` (as an actor waiting on a lost node would), else encodes."""

    victim: ClassVar[str] = ""

    def encode(self, batch: DecodedBatch) -> EncodedBatch:
        """Sleep far past any test's deadline on the victim's batch."""
        if self.victim in batch.keys:
            time.sleep(3600)
        return super().encode(batch)


def stalling_worker(victim: str) -> type[TokenizerWorker]:
    """A tokenizer actor class that never finishes the batch holding `victim`."""
    return type("StallingTokenizerWorker", (StallingTokenizerWorker,), {"victim": victim})
