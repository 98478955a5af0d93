"""Config of staged pretraining: the model, the stages of rising resolution and duration, the run."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from models.generator.config import (
    ErrorCorrectionConfig,
    FARConfig,
    FrameMaskConfig,
    GeneratorConfig,
    LongContextConfig,
    ScheduleConfig,
)
from tasks.config import StrictModel

ScheduleName = Literal["ntp", "nbp", "par", "frame", "next_scale", "far"]
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _tiny_generator() -> GeneratorConfig:
    # vocab_size and num_classes are set from the tokenizer and the dataset at run time.
    return GeneratorConfig(n_layer=2, n_head=2, n_embd=64, label_dropout=0.1)


class StageConfig(StrictModel):
    """One stage: a clip shape, a generation schedule, a budget and its optimisation."""

    name: str = Field(description="folder-safe name, unique in the run (e.g. 64px-9f)")
    resolution: int = Field(ge=8, description="square side in pixels the clips are tokenized at")
    frames: int = Field(ge=1, description="frames per clip (1 + temporal_factor·n)")
    schedule: ScheduleName = "ntp"
    block: tuple[int, int, int] = Field((1, 1, 16), description="nbp: (bt, bh, bw) latent block")
    regions: int = Field(4, ge=1, description="par: R regions, a square number")
    steps: int | None = Field(None, ge=1, description="optimizer steps; or give token_budget")
    token_budget: int | None = Field(
        None, ge=1, description="target tokens to train on; steps = ceil(budget / tokens per step)"
    )
    # Excluded from dumps: how long a stage may run is not what it learns, so it stays out of
    # the run key (and a stage stopped by it resumes with a fresh budget when run again).
    max_minutes: float | None = Field(
        None,
        gt=0,
        exclude=True,
        description="wall-time cap of the stage's training loop; it ends at its steps or here, "
        "whichever comes first, with the lr schedule over whichever binds first",
    )
    batch_size: int = Field(8, ge=1, description="clips per step across all workers")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0, description="linear warm-up (the optimizer restarts)")
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a share of lr")
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    # VideoAR's training switches (next_scale only).
    error_correction: ErrorCorrectionConfig = Field(default_factory=ErrorCorrectionConfig)
    frame_mask: FrameMaskConfig = Field(default_factory=FrameMaskConfig)
    long_context: LongContextConfig = Field(default_factory=LongContextConfig)
    # FAR's switches (far only); latent_dim and latent_hw are taken from the tokenizer.
    far: FARConfig = Field(default_factory=FARConfig)

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, value: str) -> str:
        if not _STAGE_NAME.match(value):
            raise ValueError(f"{value!r}: use letters, digits, '-' and '_' only")
        return value

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        if (self.steps is None) == (self.token_budget is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of steps and token_budget")
        if self.schedule != "next_scale":
            used = [
                field
                for field, on in (
                    ("error_correction", self.error_correction.enabled),
                    ("frame_mask", self.frame_mask.prob > 0),
                    ("long_context", self.long_context.window is not None),
                )
                if on
            ]
            if used:
                raise ValueError(
                    f"stage {self.name!r}: {', '.join(used)} are VideoAR switches; they need "
                    f"schedule next_scale, not {self.schedule}"
                )
        # By value, not by "was it given": a dumped and re-validated config (the pipeline's
        # copies, a deployment's parameters) carries the default block explicitly.
        if self.schedule != "far" and self.far != FARConfig():
            raise ValueError(
                f"stage {self.name!r}: far holds FAR's switches; they need schedule far, not "
                f"{self.schedule}"
            )
        return self

    @property
    def needs_latents(self) -> bool:
        """True when training reads the tokenizer's continuous latents (FAR trains on them;
        Infinity-style error correction re-quantizes from them), so its tokens must be stored
        with them."""
        if self.schedule == "far":
            return True
        correction = self.error_correction
        return (
            self.schedule == "next_scale" and correction.enabled and correction.mode == "infinity"
        )

    def schedule_config(self) -> ScheduleConfig:
        """The token schedule of a single-scale stage."""
        if self.schedule in ("next_scale", "far"):
            raise ValueError(
                f"stage {self.name!r}: {self.schedule} is built by its own model, not a schedule"
            )
        return ScheduleConfig(name=self.schedule, block=self.block, regions=self.regions)

    def total_steps(self, tokens_per_clip: int) -> int:
        """Optimizer steps of this stage (from steps, or from the token budget)."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.token_budget / (self.batch_size * tokens_per_clip)))


class PretrainConfig(StrictModel):
    """Everything `arvid pretrain` needs besides storage, tracking, Ray and tokenize settings."""

    dataset: str | None = Field(
        None, description="`<output_root>/<name>[@version]`; None: what the ingest section writes"
    )
    tokenizer: str = Field(
        "models:/arvid-tokenizer@champion",
        description="the tokenizer whose tokens the stages train on (pinned to one version)",
    )
    model: GeneratorConfig = Field(
        default_factory=_tiny_generator,
        description="transformer shape; vocab_size and num_classes come from the tokenizer and data",
    )
    stages: list[StageConfig] = Field(min_length=1)
    seed: int = Field(0, ge=0)
    val_shards: int = Field(
        1, ge=0, description="token shards held out for validation (the last ones by name)"
    )
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP)")
    use_gpu: bool = False
    bf16: bool = Field(True, description="bf16 autocast on GPUs (the CPU trains in float32)")
    threads_per_worker: int | None = Field(None, ge=1)
    compile_blocks: bool = Field(False, description="torch.compile each transformer block")
    activation_checkpointing: bool = False
    loss_chunk_rows: int | None = Field(
        None, ge=1, description="cross-entropy this many rows at a time (never the full logits)"
    )
    fsdp: bool = Field(
        False,
        description="shard weights, gradients and AdamW state over the workers (FSDP2) instead "
        "of a full copy on each (DDP); checkpoints stay whole either way",
    )
    checkpoint_dir: str = ".arvid/checkpoints/generator"
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    val_every: int | None = Field(None, ge=1, description="None: validate at the end of a stage")
    max_failures: int = Field(0, ge=0, description="Ray Train restarts of a failed stage")
    register_alias: str | None = Field(
        None,
        description="alias set on the registered arvid-generator version; None (the default) "
        "leaves `champion` to `arvid promote`, which judges the version on its metrics",
    )

    @model_validator(mode="after")
    def _unique_stage_names(self) -> PretrainConfig:
        names = [stage.name for stage in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stage names must be unique; repeated: {repeated}")
        for index, stage in enumerate(self.stages):
            if stage.batch_size % self.num_workers:
                raise ValueError(
                    f"stages[{index}] ({stage.name}): batch_size={stage.batch_size} does not split "
                    f"over num_workers={self.num_workers}; use a multiple of {self.num_workers}"
                )
        if self.fsdp and self.loss_chunk_rows is not None:
            raise ValueError(
                "fsdp with loss_chunk_rows: the chunked loss reads the output head's whole "
                "weight, which FSDP shards — use one of them"
            )
        return self
