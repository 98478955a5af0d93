"""Training events into the active MLflow run (driver side): metrics, sample files, checkpoint tags.

Only the driver talks to MLflow, through `tasks.tracking`: workers never need to reach the
tracking server or hold its credentials. Not specific to one model: any loop that publishes
`tasks.train.events` can be logged with it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tasks import storage, tracking
from tasks.train.events import CheckpointEvent, MetricsEvent, SampleEvent, TrainingEvent

CHECKPOINT_TAG = "arvid.checkpoint"


class EventLogger:
    """An event sink for `fit_on_ray` that logs each event to the active MLflow run."""

    def __init__(self) -> None:
        self.samples: list[str] = []
        self.last_checkpoint: str | None = None

    def __call__(self, event: TrainingEvent) -> None:
        """Log one event: metrics at their step, a sample as an artifact, a checkpoint as a tag."""
        if isinstance(event, MetricsEvent):
            tracking.log_metrics(event.metrics, step=event.step)
        elif isinstance(event, SampleEvent):
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / event.uri.rsplit("/", 1)[-1]
                storage.download_file(event.uri, local)
                tracking.log_artifact(local, event.artifact_dir)
            self.samples.append(event.uri)
        elif isinstance(event, CheckpointEvent):
            tracking.set_tags({CHECKPOINT_TAG: event.uri})
            self.last_checkpoint = event.uri
        else:
            raise TypeError(f"{event!r}: not a training event (see tasks.train.events)")
