"""What a training loop tells the driver while it runs: typed events, one class per kind.

Rank 0 publishes them; the driver hands each to an event sink (e.g. `EventLogger`, which turns
them into MLflow metrics, artifacts and tags). Nothing here is specific to one model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricsEvent:
    """Scalar metrics of the steps up to `step` (already averaged over the workers)."""

    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class SampleEvent:
    """A file the loop wrote through the storage layer (a sample video, an image) at `step`."""

    step: int
    uri: str
    artifact_dir: str = "samples"  # where the run keeps it


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint published at `step`; `uri` is its folder."""

    step: int
    uri: str


TrainingEvent = MetricsEvent | SampleEvent | CheckpointEvent
EventSink = Callable[[TrainingEvent], None]


def ignore_event(event: TrainingEvent) -> None:
    """An event sink that drops everything (a loop run without a driver)."""
