"""The tokenizer training loop: what every worker runs, with or without Ray.

`run_training(spec, worker)` resumes from the run's latest checkpoint (or starts from scratch),
trains to `spec.training.steps` or until `max_minutes` of wall time are spent (budget.py), and on
rank 0 publishes metrics, sample videos and checkpoints as `tasks.train.events` and returns a
`TrainingResult`. It knows nothing of Ray or MLflow: the `WorkerContext` says where it runs (rank,
world size, device) and where its events go, so it also runs in a plain process (world size 1),
which is how a killed run is tested and how one debugs the loop in a notebook. Checkpoints and sample videos go through the storage layer, whose settings
travel inside the spec (Ray workers do not inherit `configure_storage`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from models.tokenizer import TokenizerConfig, TokenizerLoss, VideoTokenizer, psnr, ssim
from tasks import storage
from tasks.data.clips import DecodedClipCache
from tasks.data.datasets import DatasetRef
from tasks.data.prefetch import Prefetcher
from tasks.storage import StorageSettings
from tasks.train.budget import TimeBudget, schedule_progress
from tasks.train.checkpoints import (
    CheckpointError,
    describe_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    state_digest,
)
from tasks.train.ema import WeightAverage
from tasks.train.events import CheckpointEvent, MetricsEvent, SampleEvent
from tasks.train.precision import bf16_autocast
from tasks.train.tokenizer_config import TokenizerTrainingConfig
from tasks.train.tokenizer_data import ShardClipDataset
from tasks.train.worker import WorkerContext, unwrap

log = logging.getLogger("arvid.train")


class TrainingSpec(BaseModel):
    """What every worker needs: the training config, storage settings, the data and the run folder."""

    training: TokenizerTrainingConfig
    storage: StorageSettings
    dataset: DatasetRef
    run_dir: str
    # time.time() when the job began (the driver's clock, before Ray started its workers), so
    # max_minutes covers the start-up too; None: when the loop starts.
    started_at: float | None = None


# Checkpoint metadata key: wall seconds a run had spent when the checkpoint was written, so a
# resumed run continues its time budget (and its lr schedule) instead of starting it again.
SPENT_KEY = "budget_seconds_spent"


@dataclass(frozen=True)
class TrainingResult:
    """What rank 0's loop did: steps, where it resumed, the last checkpoint, speed, final metrics."""

    final_step: int
    resumed_from_step: int
    resumed_weights_digest: str | None  # of the weights it resumed from (None: from scratch)
    checkpoint: str | None  # the latest checkpoint folder
    steps_trained: int
    train_seconds: float
    clips_per_s: float
    # From the job's start (spec.started_at) to this loop's first step: Ray's worker start-up,
    # imports, the process group, model build and restore (0 when started_at is not given).
    startup_seconds: float
    metrics: dict[str, float]  # of the last logging window


def learning_rate(
    config: TokenizerTrainingConfig, step: int, base: float, time_fraction: float = 0.0
) -> float:
    """Learning rate at `step`: linear warm-up, then constant or cosine down to min_lr_ratio over
    whichever limit binds first, the steps after warm-up or the time budget (`time_fraction`
    of it spent, see budget.py)."""
    if config.warmup_steps and step < config.warmup_steps:
        return base * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return base
    span = max(1, config.steps - config.warmup_steps)
    progress = schedule_progress(step - config.warmup_steps, span, time_fraction)
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
    if not same_architecture(tokenizer_config, spec.training.model):
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


def same_architecture(saved: TokenizerConfig, wanted: TokenizerConfig) -> bool:
    """True when a checkpoint's tokenizer config is the one a run trains: equal, except for the
    gains a calibrating quantizer has moved (its checkpoints hold the calibrated ones)."""
    if wanted.calibrate_gains and saved.calibrate_gains:
        return saved.model_dump(exclude={"scale_gains"}) == wanted.model_dump(
            exclude={"scale_gains"}
        )
    return saved == wanted


@dataclass(frozen=True)
class _Restored:
    step: int
    uri: str | None
    weights_digest: str | None
    seconds_spent: float  # of the time budget, by the calls before this one
    averaged_state: dict[str, Tensor] | None  # the weights' moving average, if the run kept one


def _restore(
    spec: TrainingSpec,
    tokenizer: VideoTokenizer,
    discriminator: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
) -> _Restored:
    """Load the run's latest checkpoint into the modules (nothing to load: step 0)."""
    uri = resume_point(spec)
    if uri is None:
        return _Restored(0, None, None, 0.0, None)
    checkpoint = load_checkpoint(uri)
    tokenizer.load_state_dict(checkpoint.tokenizer_state)
    discriminator.load_state_dict(checkpoint.discriminator_state)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(checkpoint.optimizer_state[name])
    spent = float(checkpoint.metadata.get(SPENT_KEY, 0.0))
    return _Restored(
        checkpoint.step, uri, state_digest(tokenizer.state_dict()), spent, checkpoint.averaged_state
    )


def run_training(spec: TrainingSpec, worker: WorkerContext | None = None) -> TrainingResult | None:
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
    restored = _restore(spec, tokenizer, loss.discriminator, optimizers)
    start_step, resumed_from = restored.step, restored.uri
    if resumed_from:
        log.info("rank %d: resuming from %s (step %d)", worker.rank, resumed_from, start_step)
    tokenizer.to(worker.device)
    loss.to(worker.device)
    for optimizer in optimizers.values():  # state loaded on the CPU follows its parameters
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor) and key != "step":
                    state[key] = value.to(worker.device)
    # Every rank keeps the average (the same updates everywhere under DDP); rank 0 saves it. A
    # checkpoint of a run that kept none starts it from the restored weights.
    average = (
        WeightAverage(tokenizer, cfg.ema_decay, restored.averaged_state) if cfg.ema_decay else None
    )
    model = worker.wrap(tokenizer)
    loss.discriminator = worker.wrap(loss.discriminator)
    discriminator = unwrap(loss.discriminator)

    decoded = DecodedClipCache(cfg.decoded_cache_mb * 2**20)  # one for crops and whole windows

    def batches_of(crop: int | None) -> Prefetcher[Tensor]:
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
            crop=crop,
            decoded=decoded,
        )
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, num_workers=0)
        return Prefetcher(
            iter(loader), depth=cfg.prefetch_batches, name=f"batches-rank{worker.rank}"
        )

    def progress(step: int) -> float:
        return max(step / cfg.steps, time_fraction)

    autocast = bf16_autocast(worker.device, cfg.bf16, cfg.cpu_bf16)

    budget = TimeBudget.of_minutes(cfg.max_minutes, spec.started_at, restored.seconds_spent)
    startup_seconds = time.time() - spec.started_at if spec.started_at is not None else 0.0
    time_fraction = budget.fraction(worker)  # read at the end of every step, the same on all ranks
    window: dict[str, float] = {}
    counts: dict[str, int] = {}  # per key: the GAN's terms join mid-window
    window_steps, window_start = 0, time.perf_counter()
    started, trained = time.perf_counter(), 0
    metrics: dict[str, float] = {}
    sample_clip: Tensor | None = None
    checkpoint_uri = resumed_from
    final_step = start_step
    # A run whose budget went before its first step (a slow start-up) still trains one, so it
    # leaves a checkpoint; a resumed run whose budget is spent trains nothing more.
    spent = time_fraction >= 1.0 and start_step > 0
    full_windows = cfg.on_full_windows(progress(start_step))
    batches = batches_of(None if full_windows else cfg.crop)
    try:
        for step in range(start_step, start_step if spent else cfg.steps):
            if not full_windows and cfg.on_full_windows(progress(step)):
                # The same step on every rank: `time_fraction` is rank 0's clock, broadcast.
                batches.close()
                full_windows, batches = True, batches_of(None)
                sample_clip = None  # later samples show the whole frame
                if worker.rank == 0:
                    log.info(
                        "step %d: training on whole %dpx windows from here", step, cfg.resolution
                    )
            video = next(batches).to(worker.device, non_blocking=True)
            if sample_clip is None:
                sample_clip = video[0].detach().clone()
            for name, optimizer in optimizers.items():
                base = cfg.lr if name == "tokenizer" else d_lr
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, step, base, time_fraction)

            with autocast:
                reconstruction, aux = model(video)
                g_loss, logs = loss.generator_loss(
                    video, reconstruction, tokenizer.last_layer, step
                )
            optimizers["tokenizer"].zero_grad(set_to_none=True)
            g_loss.backward()
            if cfg.grad_clip:
                logs["grad_norm"] = nn.utils.clip_grad_norm_(tokenizer.parameters(), cfg.grad_clip)
            optimizers["tokenizer"].step()
            if average is not None:
                average.update(tokenizer, step)
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
            done = final_step = step + 1
            time_fraction = budget.fraction(worker)
            last = done == cfg.steps or time_fraction >= 1.0

            if done % cfg.log_every == 0 or last:
                with torch.no_grad():
                    ssim_value = float(ssim(recon, video).mean())
                elapsed = time.perf_counter() - window_start
                metrics = {k: v / counts[k] for k, v in window.items()}
                metrics["ssim"] = ssim_value
                metrics = worker.mean(metrics)
                metrics["lr"] = optimizers["tokenizer"].param_groups[0]["lr"]
                metrics["budget_fraction"] = time_fraction
                metrics["clips_per_s"] = window_steps * cfg.batch_size * worker.world_size / elapsed
                worker.report({**metrics, "step": done})
                if worker.rank == 0:
                    worker.publish(MetricsEvent(step=done, metrics=metrics))
                window, counts, window_steps, window_start = {}, {}, 0, time.perf_counter()

            if worker.rank == 0 and (done % cfg.sample_every == 0 or last):
                uri = _write_sample(spec.run_dir, done, tokenizer, sample_clip, cfg.sample_fps)
                worker.publish(SampleEvent(step=done, uri=uri))
            if worker.rank == 0 and (done % cfg.checkpoint_every == 0 or last):
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
                        SPENT_KEY: round(budget.spent(), 3),
                    },
                    keep=cfg.keep_checkpoints,
                    averaged_state=average.state_dict() if average is not None else None,
                )
                worker.publish(CheckpointEvent(step=done, uri=checkpoint_uri))
            if last:
                break
    finally:  # stop the prefetch thread, also when a step raised
        batches.close()

    if worker.rank != 0:
        return None
    seconds = time.perf_counter() - started
    return TrainingResult(
        final_step=final_step,
        resumed_from_step=start_step,
        resumed_weights_digest=restored.weights_digest,
        checkpoint=checkpoint_uri,
        steps_trained=trained,
        train_seconds=round(seconds, 3),
        startup_seconds=round(startup_seconds, 3),
        clips_per_s=trained * cfg.batch_size * worker.world_size / seconds if trained else 0.0,
        metrics=metrics,
    )
