"""Tokenizer training on Ray Train: the per-worker loop, and the driver that tracks and registers it.

    driver (train_tokenizer)                      Ray Train workers (TorchTrainer, DDP)
    resolve dataset, open MLflow run  ──fit()──▶  run_training: resume from latest checkpoint,
    drain the event queue → MLflow    ◀─queue───  rank 0 publishes metrics / samples / checkpoints
    final checkpoint → model dir → log_model_dir → register "arvid-tokenizer" (+ alias)

Only the driver talks to MLflow. Workers report metrics through `ray.train.report` (Ray's own
record) and rank 0 also puts them on a Ray queue that the driver drains while `fit()` runs, so the
MLflow run fills live, from one process and one set of credentials, and a worker never needs to
reach the tracking server. Checkpoints and sample videos go through the storage layer, whose
settings travel inside the loop config (Ray workers do not inherit `configure_storage`).

`run_training` is the whole loop and also runs without Ray (world size 1), which is how a killed
run is tested and how one debugs the loop in a notebook.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel
from torch import Tensor, nn

from models.tokenizer import TokenizerLoss, VideoTokenizer, psnr, save_tokenizer, ssim
from tasks import registry, storage, tracking
from tasks.config import config_hash
from tasks.data.datasets import DatasetRef, resolve_dataset
from tasks.ray_runtime import RayConfig, ensure_ray, worker_env
from tasks.settings import ArvidConfig
from tasks.storage import StorageSettings
from tasks.train.checkpoints import (
    CheckpointError,
    describe_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    state_digest,
)
from tasks.train.tokenizer_config import TokenizerTrainingConfig
from tasks.train.tokenizer_data import ShardClipDataset

log = logging.getLogger("arvid.train")

MODEL_ARTIFACT = "tokenizer"
Event = dict[str, Any]


class TrainingSpec(BaseModel):
    """What every worker needs: the training config, storage settings, the data and the run folder."""

    training: TokenizerTrainingConfig
    storage: StorageSettings
    dataset: DatasetRef
    run_dir: str


# --- one worker ------------------------------------------------------------------------------


@dataclass
class WorkerContext:
    """Where a copy of the loop runs: rank, world size, device, and how rank 0 reports."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    publish: Callable[[Event], None] = lambda event: None  # rank 0's events for the driver
    report: Callable[[dict[str, float]], None] = lambda metrics: None  # every rank, same steps

    @property
    def distributed(self) -> bool:
        """True when the loop runs in a process group of more than one worker."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP-wrap a module when distributed (gradients all-reduced in backward)."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over the workers (every worker calls it with the same keys)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def learning_rate(config: TokenizerTrainingConfig, step: int, base: float) -> float:
    """Learning rate at `step`: linear warm-up, then constant or cosine down to min_lr_ratio."""
    if config.warmup_steps and step < config.warmup_steps:
        return base * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return base
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def side_by_side(video: Tensor, reconstruction: Tensor) -> np.ndarray:
    """(3, T, H, W) input and reconstruction in [-1, 1] -> (T, H, 2W, 3) uint8, input on the left."""
    pair = torch.cat([video, reconstruction], dim=-1).float().clamp(-1, 1)
    frames = ((pair + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def _write_sample(
    run_dir: str, step: int, tokenizer: VideoTokenizer, clip: Tensor, fps: float
) -> str:
    from tasks.data.video import write_frames_mp4

    was_training = tokenizer.training
    tokenizer.eval()
    with torch.no_grad():
        reconstruction, _ = tokenizer(clip.unsqueeze(0))
    tokenizer.train(was_training)
    frames = side_by_side(clip, reconstruction[0])
    data = write_frames_mp4(frames, fps=fps, crf=12, preset="ultrafast")
    uri = storage.join(run_dir, "samples", f"step-{step:08d}.mp4")
    storage.write_bytes(uri, data)
    return uri


def resume_point(spec: TrainingSpec) -> str | None:
    """The checkpoint a run continues from (None: from scratch); CheckpointError if unusable."""
    uri = latest_checkpoint(spec.run_dir) if spec.training.resume else None
    if uri is None:
        return None
    step, tokenizer_config = describe_checkpoint(uri)
    if tokenizer_config != spec.training.model:
        raise CheckpointError(
            f"{uri}: trained with another tokenizer config — set tokenizer_training.resume=false "
            "or another checkpoint_dir"
        )
    if step > spec.training.steps:
        raise CheckpointError(
            f"{uri}: already at step {step}, beyond tokenizer_training.steps="
            f"{spec.training.steps} — raise steps, or set resume=false to start over"
        )
    return uri


def _restore(
    spec: TrainingSpec,
    tokenizer: VideoTokenizer,
    discriminator: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[int, str | None, str | None]:
    """Load the run's latest checkpoint into the modules; (step, uri, weights digest)."""
    uri = resume_point(spec)
    if uri is None:
        return 0, None, None
    checkpoint = load_checkpoint(uri)
    tokenizer.load_state_dict(checkpoint.tokenizer_state)
    discriminator.load_state_dict(checkpoint.discriminator_state)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(checkpoint.optimizer_state[name])
    return checkpoint.step, uri, state_digest(tokenizer.state_dict())


def run_training(spec: TrainingSpec, worker: WorkerContext | None = None) -> dict[str, Any] | None:
    """Train from the run's latest checkpoint (or from scratch) to `steps`; rank 0 returns a summary."""
    worker = worker or WorkerContext()
    cfg = spec.training
    storage.configure_storage(spec.storage)
    if cfg.threads_per_worker:
        torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    tokenizer = VideoTokenizer(cfg.model)
    loss = TokenizerLoss(cfg.loss)
    betas = tuple(cfg.betas)
    d_lr = cfg.discriminator_lr or cfg.lr
    optimizers = {
        "tokenizer": torch.optim.AdamW(
            tokenizer.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay
        ),
        "discriminator": torch.optim.AdamW(
            loss.discriminator.parameters(), lr=d_lr, betas=betas, weight_decay=cfg.weight_decay
        ),
    }
    start_step, resumed_from, resumed_digest = _restore(
        spec, tokenizer, loss.discriminator, optimizers
    )
    if resumed_from:
        log.info("rank %d: resuming from %s (step %d)", worker.rank, resumed_from, start_step)
    tokenizer.to(worker.device)
    loss.to(worker.device)
    for optimizer in optimizers.values():  # state loaded on the CPU follows its parameters
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor) and key != "step":
                    state[key] = value.to(worker.device)
    model = worker.wrap(tokenizer)
    loss.discriminator = worker.wrap(loss.discriminator)
    discriminator = _unwrap(loss.discriminator)

    data = ShardClipDataset(
        spec.dataset,
        cfg.resolution,
        cfg.frames,
        rank=worker.rank,
        world_size=worker.world_size,
        seed=cfg.seed,
        random_crop=cfg.random_crop,
        random_flip=cfg.random_flip,
        shuffle_buffer=cfg.shuffle_buffer,
        first_epoch=start_step,  # a resumed run draws a new order, not the first epoch's again
        crop=cfg.crop,
        decoded_cache_mb=cfg.decoded_cache_mb,
    )
    batches = iter(torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, num_workers=0))
    autocast = torch.autocast(
        device_type=worker.device.type,
        dtype=torch.bfloat16,
        enabled=worker.device.type == "cuda" and cfg.bf16,
    )

    window: dict[str, float] = {}
    counts: dict[str, int] = {}  # per key: the GAN's terms join mid-window
    window_steps, window_start = 0, time.perf_counter()
    started, trained = time.perf_counter(), 0
    metrics: dict[str, float] = {}
    sample_clip: Tensor | None = None
    checkpoint_uri = resumed_from
    for step in range(start_step, cfg.steps):
        video = next(batches).to(worker.device, non_blocking=True)
        if sample_clip is None:
            sample_clip = video[0].detach().clone()
        for name, optimizer in optimizers.items():
            base = cfg.lr if name == "tokenizer" else d_lr
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, base)

        with autocast:
            reconstruction, aux = model(video)
            g_loss, logs = loss.generator_loss(video, reconstruction, tokenizer.last_layer, step)
        optimizers["tokenizer"].zero_grad(set_to_none=True)
        g_loss.backward()
        if cfg.grad_clip:
            logs["grad_norm"] = nn.utils.clip_grad_norm_(tokenizer.parameters(), cfg.grad_clip)
        optimizers["tokenizer"].step()
        # The generator's backward also filled the discriminator's grads: clear them first.
        optimizers["discriminator"].zero_grad(set_to_none=True)
        if loss.gan_active(step):
            with autocast:
                d_loss, d_logs = loss.discriminator_loss(video, reconstruction, step)
            d_loss.backward()
            optimizers["discriminator"].step()
            logs.update(d_logs)

        with torch.no_grad():
            recon = reconstruction.detach().float().clamp(-1, 1)
            logs["psnr_db"] = psnr(recon, video).mean()
        for key, value in {**logs, **aux}.items():
            window[key] = window.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
        window_steps += 1
        trained += 1
        done = step + 1

        if done % cfg.log_every == 0 or done == cfg.steps:
            with torch.no_grad():
                ssim_value = float(ssim(recon, video).mean())
            elapsed = time.perf_counter() - window_start
            metrics = {k: v / counts[k] for k, v in window.items()}
            metrics["ssim"] = ssim_value
            metrics = worker.mean(metrics)
            metrics["lr"] = learning_rate(cfg, step, cfg.lr)
            metrics["clips_per_s"] = window_steps * cfg.batch_size * worker.world_size / elapsed
            worker.report({**metrics, "step": done})
            if worker.rank == 0:
                worker.publish({"kind": "metrics", "step": done, "metrics": metrics})
            window, counts, window_steps, window_start = {}, {}, 0, time.perf_counter()

        if worker.rank == 0 and (done % cfg.sample_every == 0 or done == cfg.steps):
            uri = _write_sample(spec.run_dir, done, tokenizer, sample_clip, cfg.sample_fps)
            worker.publish({"kind": "sample", "step": done, "uri": uri})
        if worker.rank == 0 and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            checkpoint_uri = save_checkpoint(
                spec.run_dir,
                done,
                tokenizer,
                discriminator,
                optimizers,
                metadata={
                    "dataset": f"{spec.dataset.root}@{spec.dataset.version}",
                    "dataset_version": spec.dataset.version,
                    "training": cfg.model_dump(mode="json"),
                    "world_size": worker.world_size,
                },
                keep=cfg.keep_checkpoints,
            )
            worker.publish({"kind": "checkpoint", "step": done, "uri": checkpoint_uri})

    if worker.rank != 0:
        return None
    seconds = time.perf_counter() - started
    return {
        "final_step": cfg.steps,
        "resumed_from_step": start_step,
        "resumed_weights_digest": resumed_digest,
        "checkpoint": checkpoint_uri,
        "steps_trained": trained,
        "train_seconds": round(seconds, 3),
        "clips_per_s": trained * cfg.batch_size * worker.world_size / seconds if trained else 0.0,
        "metrics": metrics,
    }


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point: build this worker's context, then run the shared loop."""
    import ray.train
    import ray.train.torch

    # Ray Train logs every report (all metrics, every rank) at INFO on a logger named by its file
    # path, which LoggingConfig's filter misses; the metrics reach MLflow anyway.
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    context = ray.train.get_context()
    events = loop_config["events"]
    worker = WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        publish=events.put,
        report=ray.train.report,
    )
    return run_training(loop_config["spec"], worker)


# --- the driver ------------------------------------------------------------------------------


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


def _ray_storage_path(checkpoint_dir: str) -> str | None:
    # Ray Train keeps a little bookkeeping per run; beside our checkpoints when they are local,
    # Ray's default (~/ray_results) otherwise (no arvid checkpoint ever goes through Ray's store).
    if storage.is_s3(checkpoint_dir):
        return None
    return str(Path(checkpoint_dir).resolve() / "ray")


def fit_on_ray(
    spec: TrainingSpec, ray_config: RayConfig, on_event: Callable[[Event], None]
) -> dict[str, Any]:
    """Run the loop on Ray Train workers, feeding rank 0's events to `on_event` as they come."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    ensure_ray(ray_config)
    cfg = spec.training
    events = Queue(actor_options={"num_cpus": 0})  # a mailbox, it must not take a worker's CPU
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "events": events},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=ray.train.RunConfig(
            name=f"arvid-tokenizer-{uuid.uuid4().hex[:8]}",
            storage_path=_ray_storage_path(cfg.checkpoint_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            # Our metrics reach MLflow through the queue; Ray's per-report INFO lines are noise.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            # Workers do not see this process's environment: S3 endpoint and credentials.
            worker_runtime_env={"env_vars": worker_env(ray_config)},
        ),
    )

    def drain() -> None:
        while True:
            try:
                event = events.get_nowait()
            except Empty:
                return
            on_event(event)

    try:
        # fit() blocks; in a thread it leaves this one free to log events while training runs.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-fit") as pool:
            future = pool.submit(trainer.fit)
            while not future.done():
                drain()
                time.sleep(0.5)
            result = future.result()
        drain()
    finally:
        events.shutdown()
    if not result.return_value:
        raise RuntimeError("tokenizer training returned no summary from rank 0")
    return result.return_value


class _EventLogger:
    """Turns rank 0's events into MLflow metrics and artifacts (driver side, active run)."""

    def __init__(self) -> None:
        self.samples: list[str] = []

    def __call__(self, event: Event) -> None:
        kind, step = event["kind"], int(event["step"])
        if kind == "metrics":
            tracking.log_metrics(event["metrics"], step=step)
        elif kind == "sample":
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / event["uri"].rsplit("/", 1)[-1]
                storage.download_file(event["uri"], local)
                tracking.log_artifact(local, "samples")
            self.samples.append(event["uri"])
        elif kind == "checkpoint":
            tracking.set_tags({"arvid.checkpoint": event["uri"]})


def run_tokenizer_training(config: ArvidConfig) -> TokenizerTrainingSummary:
    """Train on Ray inside an MLflow run and log the final tokenizer as a model (not registered)."""
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
    spec = TrainingSpec(training=training, storage=config.storage, dataset=dataset, run_dir=run_dir)
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
        outcome = fit_on_ray(spec, config.ray, _EventLogger())
        tracking.log_metrics(
            {
                "final/psnr_db": outcome["metrics"].get("psnr_db", float("nan")),
                "final/ssim": outcome["metrics"].get("ssim", float("nan")),
                "train_seconds": outcome["train_seconds"],
                "mean_clips_per_s": outcome["clips_per_s"],
                "resumed_from_step": outcome["resumed_from_step"],
            },
            step=outcome["final_step"],
        )
        checkpoint = load_checkpoint(outcome["checkpoint"])
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
        resumed_from_step=outcome["resumed_from_step"],
        steps_trained=outcome["steps_trained"],
        num_workers=training.num_workers,
        train_seconds=outcome["train_seconds"],
        clips_per_s=round(outcome["clips_per_s"], 3),
        metrics={k: round(float(v), 6) for k, v in outcome["metrics"].items()},
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
