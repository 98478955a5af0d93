"""EventLogger alone: training events land in a real MLflow run (sqlite store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks import storage
from tasks.tracking import TrackingConfig, tracked_run
from tasks.train.event_logger import CHECKPOINT_TAG, EventLogger
from tasks.train.events import CheckpointEvent, MetricsEvent, SampleEvent


def test_metrics_samples_and_checkpoints_reach_the_active_run(
    tracking_config: TrackingConfig, tmp_path: Path
) -> None:
    sample = storage.join(str(tmp_path / "run"), "samples", "step-00000002.mp4")
    storage.write_bytes(sample, b"not really a video")
    logger = EventLogger()
    with tracked_run(tracking_config, "events") as run:
        logger(MetricsEvent(step=1, metrics={"loss": 2.0}))
        logger(MetricsEvent(step=2, metrics={"loss": 1.5, "psnr_db": 20.0}))
        logger(SampleEvent(step=2, uri=sample))
        logger(CheckpointEvent(step=2, uri="s3://bucket/run/step-00000002"))
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    assert client.get_run(run.info.run_id).data.metrics["psnr_db"] == 20.0
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert artifacts == ["samples/step-00000002.mp4"]
    local = client.download_artifacts(run.info.run_id, artifacts[0], str(tmp_path / "dl"))
    assert Path(local).read_bytes() == b"not really a video"
    tags = client.get_run(run.info.run_id).data.tags
    assert tags[CHECKPOINT_TAG] == "s3://bucket/run/step-00000002"
    assert logger.samples == [sample] and logger.last_checkpoint == tags[CHECKPOINT_TAG]


def test_something_that_is_not_an_event_is_refused(tracking_config: TrackingConfig) -> None:
    with tracked_run(tracking_config, "events"):
        with pytest.raises(TypeError, match="not a training event"):
            EventLogger()({"kind": "metrics", "step": 1})  # type: ignore[arg-type]
