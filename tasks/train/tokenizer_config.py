"""Config of tokenizer training: data, model, losses, optimisation, checkpoints, workers, registry."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from models.tokenizer.config import LossConfig, TokenizerConfig
from tasks.config import StrictModel

# bf16 on CPU workers: a bool or "auto" (not "on"/"off": YAML reads those as booleans). Here, not
# in tasks.train.precision, because loading a config must not import torch.
CpuBf16 = bool | Literal["auto"]

# Fields that only say how long, how often or where a run goes (or name the data, whose version
# is hashed instead): changing them keeps the run's checkpoints valid, so they stay out of the key
# that names the checkpoint folder (a run with a larger `steps` resumes where the last one stopped).
_NOT_IN_RUN_KEY = {
    "dataset",
    "steps",
    "max_minutes",
    "checkpoint_every",
    "keep_checkpoints",
    "checkpoint_dir",
    "resume",
    "log_every",
    "sample_every",
    "sample_fps",
    "num_workers",
    "use_gpu",
    "bf16",
    "cpu_bf16",
    "threads_per_worker",
    "max_failures",
    "decoded_cache_mb",
    "prefetch_batches",
    "register_alias",
}


class TokenizerTrainingConfig(StrictModel):
    """Everything `arvid train-tokenizer` needs besides storage, tracking and Ray settings."""

    dataset: str | None = Field(
        None,
        description="`<output_root>/<name>[@version]`; None: the dataset the ingest section writes (latest version)",
    )
    model: TokenizerConfig = Field(default_factory=TokenizerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    # Clips: short side resized to `resolution`, then a random (or centre) crop; `frames` = 1 + 4n.
    resolution: int = Field(64, ge=8, description="square crop side in pixels")
    frames: int = Field(17, ge=1, description="frames per training clip (1 + temporal_factor*n)")
    # Train on smaller windows than the clips: a conv tokenizer is size-agnostic, and a 32x32x9
    # window costs ~1/8 of a 64x64x17 clip, so a CPU budget buys ~8x the steps.
    crop: int | None = Field(
        None,
        ge=8,
        description="side of the random square cut from each resized clip; None: resolution",
    )
    # A multi-scale tokenizer's coarse scales merge on windows below its pyramid side, so crops
    # that small need whole windows at the end: the last `full_window_fraction` of training
    # (of its steps, or of its time budget, whichever is further along) uses uncropped clips, so
    # the decoder and the calibrated gains finish on the pyramid its tokens come from. Any
    # tokenizer gains from it: its per-frame norms take statistics over the window, so a model
    # trained on crops alone meets other statistics on whole frames (single-scale FSQ, 240 s:
    # 1.1-1.6 dB lower held out; with a per-position norm instead, no gap).
    full_window_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of training at the end on uncropped windows; 0: crops throughout",
    )
    random_crop: bool = True
    random_flip: bool = True
    shuffle_buffer: int = Field(32, ge=1, description="clips mixed across shards in each worker")
    decoded_cache_mb: int = Field(
        512, ge=0, description="decoded clips each worker keeps (MiB); 0: decode every draw"
    )
    prefetch_batches: int = Field(
        2, ge=1, description="batches a background thread keeps ready (decoded, cropped)"
    )
    # Optimisation: AdamW for the tokenizer and the discriminator, warm-up then cosine or constant.
    batch_size: int = Field(
        4, ge=1, description="clips per worker per step (global = x num_workers)"
    )
    lr: float = Field(1e-3, gt=0)
    discriminator_lr: float | None = Field(None, gt=0, description="None: the same as lr")
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; None: no clip")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the weights (ema.py) and publish it "
        "instead of the last step's; None: the last step's weights",
    )
    steps: int = Field(
        1000, ge=1, description="total optimizer steps (a resumed run ends here too)"
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="wall-time budget of the run, start-up included; it stops at `steps` or "
        "here, whichever comes first, and the lr schedule spans whichever binds first. None: "
        "steps alone (exactly reproducible)",
    )
    seed: int = Field(0, ge=0)
    # Checkpoints: <checkpoint_dir>/<dataset>-<run key>/step-<n>/ plus latest.json (storage URI).
    checkpoint_dir: str = ".arvid/checkpoints/tokenizer"
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept per run")
    resume: bool = Field(
        True, description="continue from the run's latest checkpoint if there is one"
    )
    # Reporting.
    log_every: int = Field(10, ge=1, description="steps between metric reports")
    sample_every: int = Field(100, ge=1, description="steps between sample reconstructions")
    sample_fps: float = Field(8.0, gt=0)
    # Execution.
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP)")
    use_gpu: bool = False
    bf16: bool = Field(True, description="bf16 autocast on GPU workers")
    cpu_bf16: CpuBf16 = Field(
        False,
        description="bf16 autocast on CPU workers: true, false, or auto (where the CPU has "
        "AVX512-BF16 or AMX; emulated bf16 is slower than float32)",
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch threads per worker; None: Ray's default (its CPUs)"
    )
    max_failures: int = Field(
        0, ge=0, description="worker-group restarts Ray Train may do (each resumes from latest)"
    )
    # Registry: the tokenize flow reads models:/arvid-tokenizer@champion, and no promotion gate
    # exists for tokenizers, so a finished training takes the alias; None registers without it.
    register_alias: str | None = "champion"

    @model_validator(mode="after")
    def _check(self) -> TokenizerTrainingConfig:
        model = self.model
        if not model.frames_fit(self.frames):
            raise ValueError(
                f"frames={self.frames}: the tokenizer needs frames = 1 + {model.temporal_factor}n "
                f"(e.g. {model.frames_near(self.frames)})"
            )
        if not model.side_fits(self.resolution):
            raise ValueError(
                f"resolution={self.resolution}: the tokenizer needs a multiple of "
                f"{model.spatial_factor} (e.g. {model.sides_near(self.resolution)})"
            )
        if self.crop is not None and (
            not model.side_fits(self.crop) or self.crop > self.resolution
        ):
            raise ValueError(
                f"crop={self.crop}: must be a multiple of {model.spatial_factor} and at most "
                f"resolution={self.resolution}"
            )
        pyramid_side = model.full_pyramid_side()
        if pyramid_side is not None and self.resolution < pyramid_side:
            raise ValueError(
                f"resolution={self.resolution}: a multi-scale tokenizer with scales "
                f"{model.scales} needs clips of at least {pyramid_side}px so that every scale "
                "keeps its own grid (or use fewer scales)"
            )
        if (
            pyramid_side is not None
            and self.window_side < pyramid_side
            and self.full_window_fraction == 0
        ):
            # Below that side coarse scales merge ((1, 2, 4, 8) on a 4x4 latent is 1, 1, 2, 4):
            # the decoder would train on another pyramid than the one its tokens come from.
            raise ValueError(
                f"window {self.window_side}px (crop={self.crop}, resolution={self.resolution}): "
                f"a multi-scale tokenizer with scales {model.scales} trains on windows of at "
                f"least {pyramid_side}px so that every scale keeps its own grid — set crop to "
                f"{pyramid_side} or more (or null), finish on whole windows with "
                "full_window_fraction > 0, or use fewer scales"
            )
        return self

    @property
    def window_side(self) -> int:
        """Side of the square windows training sees: `crop`, else the whole `resolution`."""
        return self.crop or self.resolution

    def on_full_windows(self, progress: float) -> bool:
        """Whether training `progress` of the way through (0..1) uses uncropped windows."""
        if self.crop is None or self.crop == self.resolution:
            return True
        return self.full_window_fraction > 0 and progress >= 1 - self.full_window_fraction

    def run_key(self, dataset_version: str) -> str:
        """Short hash naming the checkpoint folder: dataset version plus every field that shapes
        the weights (model, loss, data, optimiser, seed), not the budget or cadence."""
        shaping = self.model_dump(mode="json", exclude=_NOT_IN_RUN_KEY)
        canonical = json.dumps(
            {"dataset_version": dataset_version, **shaping}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]
