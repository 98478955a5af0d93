"""One pretraining stage on one worker: build or inherit the model, train to the stage's steps,
checkpoint, validate. Knows nothing of Ray or MLflow: the driver passes a worker context in and
receives events out.

Exact resume: the batch of step s is a function of (seed, s, rank) (batch_plan.py), and the
random state is reseeded from (seed, s, rank) before every step, so every draw of a step (label
dropout, error correction, frame masks) is too. A checkpoint therefore needs only the weights, the
optimizer state and its step: a run killed and resumed takes the same batches and draws as one
that never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.generator.config import FARConfig, GeneratorConfig, VideoARConfig
from models.generator.far import FAR
from models.generator.persist import build_generator, unwrap_generator
from models.generator.schedules import Schedule, build_schedule
from models.generator.transformer import Generator
from models.generator.videoar import VideoAR
from tasks import storage
from tasks.pretrain.batch_plan import BatchPlan
from tasks.pretrain.checkpoints import StageCheckpoints
from tasks.pretrain.config import StageConfig
from tasks.pretrain.sharding import full_state, load_full_optimizer_state, scalar, shard_model
from tasks.pretrain.tokens import TokenClips
from tasks.storage import StorageSettings
from tasks.train.budget import TimeBudget, schedule_progress
from tasks.train.events import MetricsEvent
from tasks.train.precision import bf16_autocast
from tasks.train.worker import WorkerContext

log = logging.getLogger("arvid.pretrain")


@dataclass
class TrainOptions:
    """How a stage runs (not what it learns): devices, speed switches, cadence of side work."""

    device: str = "cpu"
    bf16: bool = True
    threads: int | None = None
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int | None = None
    val_batch_size: int = 16
    compile_blocks: bool = False  # torch.compile each transformer block
    activation_checkpointing: bool = False  # recompute block activations in backward
    loss_chunk_rows: int | None = None  # cross-entropy this many rows at a time (chunked_loss.py)
    fsdp: bool = False  # FSDP2 instead of DDP when distributed (sharding.py)
    flops_per_token: float | None = None  # with a peak: tokens/s -> MFU in the step metrics
    peak_flops: float | None = None


@dataclass
class StageSpec:
    """Everything a worker needs to train one stage (picklable: it travels to Ray workers)."""

    stage: StageConfig
    model: GeneratorConfig  # vocab_size and num_classes already set
    videoar: VideoARConfig | None  # the token layout of next_scale stages (switches: the stage's)
    train: TokenClips
    val: TokenClips | None
    run_dir: str  # this stage's checkpoints
    init_from: str | None  # the previous stage's final checkpoint, or None
    seed: int
    options: TrainOptions
    storage: StorageSettings
    far: FARConfig | None = None  # the latent layout and switches of far stages


@dataclass
class StageResult:
    """What a finished stage returns to the driver (rank 0)."""

    steps: int
    resumed_from_step: int
    final_checkpoint: str
    train_bits: float  # the stage's loss metric: bits/token, or the flow-matching MSE for far
    val_bits: float | None
    tokens_per_s: float
    seconds: float


def learning_rate(stage: StageConfig, step: int, total: int, time_fraction: float = 0.0) -> float:
    """lr at `step` of `total`: linear warm-up, then cosine, linear or constant to min_lr_ratio
    over whichever binds first, the steps or the stage's time budget (`time_fraction` spent)."""
    if stage.warmup_steps and step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    if stage.decay == "constant" or total <= stage.warmup_steps:
        return stage.lr
    progress = schedule_progress(
        step - stage.warmup_steps, total - stage.warmup_steps, time_fraction
    )
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if stage.decay == "cosine" else 1 - progress
    return stage.lr * (stage.min_lr_ratio + (1 - stage.min_lr_ratio) * shape)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step on one worker (a function of its arguments alone)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


@dataclass
class Batch:
    """One worker's clips of a step: ids per scale (B, t, h_k, w_k), class ids, latents if any."""

    scales: list[torch.Tensor]
    labels: torch.Tensor
    continuous: torch.Tensor | None  # (B, D, t, h, w): VideoAR's error correction needs it


class StageModel:
    """The trained module, its schedule and how a batch of clip numbers becomes a loss."""

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        videoar = spec.videoar
        if videoar is not None:  # the stage's switches win: one place says what training does
            videoar = videoar.model_copy(
                update={
                    "error_correction": spec.stage.error_correction,
                    "frame_mask": spec.stage.frame_mask,
                    "long_context": spec.stage.long_context,
                }
            )
        self.module = build_generator(spec.model, videoar, spec.far)
        generator, _ = unwrap_generator(self.module)
        self.generator: Generator = generator
        generator.checkpoint_blocks = spec.options.activation_checkpointing
        if spec.options.compile_blocks:  # per block, as torchtitan does: small graphs, one shape
            for block in generator.blocks:
                block.compile()
        self.schedule: Schedule | None = None
        if spec.videoar is None and spec.far is None:
            t, h, w = spec.train.scales[0].shape[1:]
            self.schedule = build_schedule(spec.stage.schedule_config(), (t, h, w))
            self.schedule.check_learned_inputs(spec.model.max_learned_inputs)

    @property
    def metric(self) -> str:
        """What the loss is reported as: FAR's flow-matching error is no cross-entropy."""
        return "flow_mse" if isinstance(self.module, FAR) else "bits_per_token"

    def to_metric(self, loss: float) -> float:
        """A mean loss (nats, or FAR's squared error) in the unit of ``metric``."""
        return loss if isinstance(self.module, FAR) else loss / math.log(2.0)

    def batch(self, clips: TokenClips, rows: np.ndarray, device: torch.device) -> Batch:
        """The given clip numbers as tensors on `device`."""
        if self.spec.far is not None and clips.continuous is None:
            raise ValueError(
                f"stage {self.spec.stage.name!r}: schedule far trains on the tokenizer's "
                "continuous latents, but these token shards hold none — tokenize with "
                "tokenize.latents=true (the pretrain flow asks for it on far stages)"
            )
        continuous = None
        if clips.continuous is not None:
            continuous = torch.from_numpy(clips.continuous[rows]).to(device)
        return Batch(
            scales=[torch.from_numpy(a[rows]).to(device) for a in clips.scales],
            labels=torch.from_numpy(clips.labels[rows]).to(device),
            continuous=continuous,
        )

    def loss(self, wrapped: nn.Module, batch: Batch, perturb: bool) -> torch.Tensor:
        """Mean cross-entropy (nats) through `wrapped` (the DDP module or the module itself)."""
        if isinstance(self.module, FAR):  # flow matching: the mean squared velocity error
            return wrapped(batch.continuous, batch.labels, clean_context=perturb)
        # The output layers run here, on the hidden states: over chunks of rows, per FSQ digit,
        # with a copy head's sources, or plainly (Generator.token_loss serves every case).
        generator = self.generator
        copy_from = None
        if isinstance(self.module, VideoAR):
            hidden, targets, copy_from = wrapped(
                batch.scales,
                batch.labels,
                continuous=batch.continuous,
                perturb=perturb,
                return_hidden=True,
                return_copy_source=True,
            )
        else:
            schedule = self.schedule.to(batch.labels.device)
            targets = schedule.tokens_to_sequence(batch.scales[0])  # (B, N)
            inputs = schedule.input_ids(targets, generator.config.vocab_size)
            hidden = wrapped(
                inputs, schedule.coords, schedule.group, batch.labels, return_hidden=True
            )
        return generator.token_loss(hidden, targets, self.spec.options.loss_chunk_rows, copy_from)


@torch.no_grad()
def validate(model: StageModel, clips: TokenClips, device: torch.device, batch_size: int) -> float:
    """Held-out loss over every clip of `clips` in the unit of ``model.metric`` (eval mode: no
    dropout, no perturbation)."""
    module = model.module
    was_training = module.training
    module.eval()
    total, count = 0.0, 0
    try:
        # FAR's loss draws noise and time steps: the same draws at every validation, every rank.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            for start in range(0, len(clips), batch_size):
                rows = np.arange(start, min(start + batch_size, len(clips)))
                nats = model.loss(module, model.batch(clips, rows, device), perturb=False)
                total += float(nats) * len(rows)
                count += len(rows)
    finally:
        module.train(was_training)
    return model.to_metric(total / count)


def _validate_all(model: StageModel, spec: StageSpec, worker: WorkerContext) -> float:
    bits = validate(model, spec.val, worker.device, spec.options.val_batch_size)
    return worker.mean({"bits": bits})["bits"]  # every worker scores the same clips: equal


def run_stage(spec: StageSpec, worker: WorkerContext | None = None) -> StageResult | None:
    """Train one stage from its latest checkpoint (or the previous stage, or scratch); rank 0
    returns the result."""
    worker = worker or WorkerContext()
    options = spec.options
    storage.configure_storage(spec.storage)
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(spec.seed)  # the same initial weights on every rank
    model = StageModel(spec)
    module = model.module
    checkpoints = StageCheckpoints(spec.run_dir, keep=options.keep_checkpoints)
    fsdp = options.fsdp and worker.distributed
    start, optimizer_state = 0, None
    latest = checkpoints.latest()
    if latest is not None:
        start, weights, optimizer_state = checkpoints.read(latest)
        module.load_state_dict(weights)
        log.info("rank %d: resuming %s at step %d", worker.rank, spec.stage.name, start)
    elif spec.init_from is not None:
        inherited = StageCheckpoints.load_weights(spec.init_from)
        module.load_state_dict(inherited)  # positions are coordinates: any grid loads
        log.info("rank %d: %s starts from %s", worker.rank, spec.stage.name, spec.init_from)
    module.to(worker.device)
    if fsdp:  # before the optimizer: it must hold the sharded parameters
        shard_model(module, model.generator)
    optimizer = torch.optim.AdamW(
        module.parameters(),
        lr=spec.stage.lr,
        weight_decay=spec.stage.weight_decay,
        fused=worker.device.type == "cuda",
    )
    if optimizer_state is not None:
        if fsdp:
            load_full_optimizer_state(module, optimizer, optimizer_state)
        else:  # load_state_dict moves the state to each parameter's device
            optimizer.load_state_dict(optimizer_state)
    wrapped = module if fsdp else worker.wrap(module)
    total = spec.stage.total_steps(spec.train.tokens_per_clip)
    plan = BatchPlan(len(spec.train), spec.stage.batch_size, worker.world_size, spec.seed)
    autocast = bf16_autocast(worker.device, options.bf16, cpu_bf16=False)  # the CPU: float32
    tokens_per_step = spec.stage.batch_size * spec.train.tokens_per_clip
    window_loss, window_steps, window_started = 0.0, 0, time.perf_counter()
    started, last_bits, grad_norm = time.perf_counter(), float("nan"), 0.0
    val_bits: float | None = None
    # max_minutes: this call's wall time (a resumed stage gets a fresh budget for the rest).
    budget = TimeBudget.of_minutes(spec.stage.max_minutes)
    time_fraction, final = budget.fraction(worker), start
    module.train()
    for step in range(start, total):
        torch.manual_seed(step_seed(spec.seed, step, worker.rank))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(spec.stage, step, total, time_fraction)
        batch = model.batch(spec.train, plan.worker_batch(step, worker.rank), worker.device)
        with autocast:
            loss = model.loss(wrapped, batch, perturb=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = spec.stage.grad_clip if spec.stage.grad_clip is not None else float("inf")
        grad_norm = scalar(torch.nn.utils.clip_grad_norm_(module.parameters(), clip))
        optimizer.step()
        window_loss += float(loss.detach())
        window_steps += 1
        done = final = step + 1
        time_fraction = budget.fraction(worker)
        last = done == total or time_fraction >= 1.0
        if done % options.log_every == 0 or last:
            seconds = time.perf_counter() - window_started
            last_bits = model.to_metric(worker.mean({"nats": window_loss / window_steps})["nats"])
            tokens_per_s = tokens_per_step * window_steps / max(seconds, 1e-9)
            metrics = {
                f"loss_{model.metric}": last_bits,
                "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_s,
            }
            if options.flops_per_token and options.peak_flops:
                metrics["mfu"] = tokens_per_s * options.flops_per_token / options.peak_flops
            worker.publish(MetricsEvent(step=done, metrics=metrics))
            window_loss, window_steps, window_started = 0.0, 0, time.perf_counter()
        if (
            spec.val is not None
            and options.val_every
            and done % options.val_every == 0
            and not last
        ):
            val_bits = _validate_all(model, spec, worker)
            worker.publish(MetricsEvent(step=done, metrics={f"val_{model.metric}": val_bits}))
        if done % options.checkpoint_every == 0 or last:
            whole = full_state(module, optimizer) if fsdp else None  # a collective: every rank
            if worker.rank == 0:
                checkpoints.save(
                    done, module, optimizer, {"stage": spec.stage.name, "total": total}, whole
                )
            if worker.distributed:  # the others wait: nobody runs ahead of a checkpoint
                torch.distributed.barrier()
        if last:
            break
    seconds = time.perf_counter() - started
    if spec.val is not None:
        val_bits = _validate_all(model, spec, worker)
        worker.publish(MetricsEvent(step=final, metrics={f"val_{model.metric}": val_bits}))
    if worker.rank != 0:
        return None
    trained = final - start
    return StageResult(
        steps=final,
        resumed_from_step=start,
        final_checkpoint=checkpoints.uri(final),
        train_bits=last_bits,
        val_bits=val_bits,
        tokens_per_s=tokens_per_step * trained / seconds if trained and seconds > 0 else 0.0,
        seconds=seconds,
    )
