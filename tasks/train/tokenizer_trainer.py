"""Tokenizer training as one step: resolve the data, train on Ray inside an MLflow run, register.

    run_tokenizer_training                       tokenizer_loop.run_training on every worker
      resolve dataset, open MLflow run  ──fit_on_ray──▶  resume from latest checkpoint, train,
      EventLogger: events → MLflow      ◀──events────   rank 0 publishes metrics/samples/checkpoints
      final checkpoint → model dir → log_model_dir
    register_tokenizer: "arvid-tokenizer" with lineage tags (+ alias)

The pieces live apart and are tested alone: the loop (`tokenizer_loop`), the Ray driver
(`ray_driver.fit_on_ray`, generic over loops), the MLflow side (`event_logger`); this module
only wires them for the tokenizer.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from models.tokenizer import save_tokenizer
from tasks import registry, storage, tracking
from tasks.config import config_hash
from tasks.data.datasets import resolve_dataset
from tasks.settings import ArvidConfig
from tasks.train.checkpoints import load_checkpoint
from tasks.train.event_logger import EventLogger
from tasks.train.ray_driver import WorkerGroup, fit_on_ray, ray_storage_path
from tasks.train.tokenizer_config import TokenizerTrainingConfig
from tasks.train.tokenizer_data import ShardClipDataset
from tasks.train.tokenizer_loop import TrainingSpec, resume_point, run_training

MODEL_ARTIFACT = "tokenizer"


class TokenizerTrainingSummary(BaseModel):
    """What a tokenizer training did: data, steps, speed, final metrics, MLflow run and model."""

    dataset: str
    dataset_version: str
    run_id: str
    run_dir: str
    checkpoint: str
    config_hash: str
    git_commit: str
    steps: int
    resumed_from_step: int
    steps_trained: int
    num_workers: int
    train_seconds: float
    startup_seconds: float  # from the call's start to the first training step (Ray start-up)
    clips_per_s: float
    metrics: dict[str, float]
    model_uri: str  # runs:/<run id>/tokenizer
    registered_model: str | None = None
    model_version: str | None = None
    alias: str | None = None

    def reference(self) -> str:
        """The registry reference downstream steps should load (alias if set, else version)."""
        if self.registered_model is None:
            return self.model_uri
        if self.alias:
            return f"models:/{self.registered_model}@{self.alias}"
        return f"models:/{self.registered_model}/{self.model_version}"

    def line(self) -> str:
        """The one-line human summary."""
        resumed = f", resumed at step {self.resumed_from_step}" if self.resumed_from_step else ""
        psnr_db = self.metrics.get("psnr_db")
        quality = f", train PSNR {psnr_db:.1f} dB" if psnr_db is not None else ""
        return (
            f"train-tokenizer {self.dataset}@{self.dataset_version}: {self.steps} steps"
            f"{resumed} on {self.num_workers} worker(s), {self.clips_per_s:.1f} clips/s{quality}"
            f" -> {self.reference()} (MLflow run {self.run_id})"
        )


def dataset_reference(config: ArvidConfig) -> str:
    """The dataset tokenizer training reads: its own setting, else what the ingest section writes."""
    training = config.tokenizer_training
    if training.dataset:
        return training.dataset
    return storage.join(config.ingest.output_root, config.ingest.name)


def run_tokenizer_training(config: ArvidConfig) -> TokenizerTrainingSummary:
    """Train on Ray inside an MLflow run and log the final tokenizer as a model (not registered)."""
    started_at = time.time()  # max_minutes counts from here: Ray's start-up is part of the run
    training: TokenizerTrainingConfig = config.tokenizer_training
    storage.configure_storage(config.storage)
    # Absolute: Ray Train workers run in their own working directory.
    dataset = resolve_dataset(storage.absolute(dataset_reference(config)))
    # Fail here, not inside a worker, when the data cannot feed the workers.
    ShardClipDataset(dataset, training.resolution, training.frames, world_size=training.num_workers)
    run_dir = storage.join(
        storage.absolute(training.checkpoint_dir),
        f"{dataset.name}-{training.run_key(dataset.version)}",
    )
    spec = TrainingSpec(
        training=training,
        storage=config.storage,
        dataset=dataset,
        run_dir=run_dir,
        started_at=started_at,
    )
    resume_point(spec)  # an unusable checkpoint is reported here, before any worker starts
    digest = config_hash(training)
    tags = {
        "arvid.step": "train-tokenizer",
        "arvid.dataset": dataset.name,
        "arvid.dataset_version": dataset.version,
        "arvid.config_hash": digest,
        "arvid.run_dir": run_dir,
    }
    params = {"tokenizer_training": training.model_dump(mode="json"), "dataset": dataset.root}
    with tracking.tracked_run(
        config.tracking, f"train-tokenizer-{dataset.name}", params, tags
    ) as run:
        outcome = fit_on_ray(
            run_training,
            spec,
            WorkerGroup(training.num_workers, training.use_gpu, training.max_failures),
            config.ray,
            EventLogger(),
            run_name=f"arvid-tokenizer-{uuid.uuid4().hex[:8]}",
            storage_path=ray_storage_path(training.checkpoint_dir),
        )
        tracking.log_metrics(
            {
                "final/psnr_db": outcome.metrics.get("psnr_db", float("nan")),
                "final/ssim": outcome.metrics.get("ssim", float("nan")),
                "train_seconds": outcome.train_seconds,
                "startup_seconds": outcome.startup_seconds,
                "mean_clips_per_s": outcome.clips_per_s,
                "resumed_from_step": outcome.resumed_from_step,
            },
            step=outcome.final_step,
        )
        if outcome.checkpoint is None:
            raise RuntimeError(f"{run_dir}: the training loop saved no checkpoint")
        checkpoint = load_checkpoint(outcome.checkpoint)
        with tempfile.TemporaryDirectory(prefix="arvid-tokenizer-") as tmp:
            model_dir = Path(tmp) / MODEL_ARTIFACT
            save_tokenizer(checkpoint.build_tokenizer(), model_dir)
            model_uri = registry.log_model_dir(model_dir, MODEL_ARTIFACT, kind="tokenizer")
        run_id = run.info.run_id
    return TokenizerTrainingSummary(
        dataset=dataset.name,
        dataset_version=dataset.version,
        run_id=run_id,
        run_dir=run_dir,
        checkpoint=checkpoint.uri,
        config_hash=digest,
        git_commit=tracking.git_commit(),
        steps=checkpoint.step,
        resumed_from_step=outcome.resumed_from_step,
        steps_trained=outcome.steps_trained,
        num_workers=training.num_workers,
        train_seconds=outcome.train_seconds,
        startup_seconds=outcome.startup_seconds,
        clips_per_s=round(outcome.clips_per_s, 3),
        metrics={k: round(float(v), 6) for k, v in outcome.metrics.items()},
        model_uri=model_uri,
    )


def register_tokenizer(
    summary: TokenizerTrainingSummary, alias: str | None
) -> TokenizerTrainingSummary:
    """Register the logged tokenizer as arvid-tokenizer with lineage tags; optionally alias it."""
    tags = {
        "arvid.dataset": summary.dataset,
        "arvid.dataset_version": summary.dataset_version,
        "arvid.config_hash": summary.config_hash,
        "arvid.git_commit": summary.git_commit,
        "arvid.steps": str(summary.steps),
    }
    version = registry.register(
        summary.model_uri, registry.TOKENIZER_MODEL, summary.run_id, tags, alias
    )
    return summary.model_copy(
        update={
            "registered_model": registry.TOKENIZER_MODEL,
            "model_version": version,
            "alias": alias,
        }
    )


def train_tokenizer(config: ArvidConfig) -> TokenizerTrainingSummary:
    """Train the tokenizer on Ray, track it in MLflow, and register it as arvid-tokenizer."""
    summary = run_tokenizer_training(config)
    return register_tokenizer(summary, config.tokenizer_training.register_alias)
