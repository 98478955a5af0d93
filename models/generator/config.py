"""The generator family's configs: pydantic only, so loading a run's config needs no torch.

The modules that use them (transformer, schedules, videoar, error_correction) import them from
here; `models.generator` also exports each by name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch


class GeneratorConfig(BaseModel):
    """Size and conditioning of the generator; the defaults are the papers' 24 × 1536 × 16 shape
    (~0.88B parameters with the 64k vocabulary, 0.68B of them in the blocks)."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = 64_000  # FSQ 8,8,8,5,5,5
    output_head: Literal["vocab", "digits"] = Field(
        "vocab",
        description="vocab: one softmax over every code; digits: one softmax per FSQ digit "
        "(digit_head.py), needs output_levels (pretraining fills them from the tokenizer)",
    )
    output_levels: list[int] | None = Field(
        None, description="the tokenizer's FSQ levels, for output_head digits"
    )
    copy_previous: bool = Field(
        False,
        description="a copy head (copy_head.py): a learned gate mixes 'repeat the token at this "
        "position and scale in the previous latent frame' into the head's distribution; "
        "next_scale schedules only, eager decoding",
    )
    num_classes: int = 101  # class ids 0..num_classes-1; id num_classes is the null class
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1536
    mlp_hidden: int | None = None  # SwiGLU width; None = 8/3·n_embd rounded up to 64
    qk_norm: bool = True
    rope_theta: float = 10_000.0
    label_dropout: float = 0.1  # training only: the null class, for classifier-free guidance
    max_learned_inputs: int = 256  # start input + transition inputs (PAR's M1..M(R-1))
    norm_eps: float = 1e-5
    init_std: float = 0.02

    @model_validator(mode="after")
    def _check_heads(self) -> GeneratorConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if (self.n_embd // self.n_head) % 2 or self.n_embd // self.n_head < 8:
            raise ValueError("head_dim (n_embd / n_head) must be even and >= 8 for 3D RoPE")
        if self.output_levels is not None and math.prod(self.output_levels) != self.vocab_size:
            raise ValueError(
                f"output_levels {self.output_levels} number {math.prod(self.output_levels)} "
                f"codes, but vocab_size is {self.vocab_size}"
            )
        return self

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        """SwiGLU hidden width."""
        return self.mlp_hidden or 64 * math.ceil(8 * self.n_embd / 3 / 64)


class ScheduleConfig(BaseModel):
    """Which schedule to train and sample with; a YAML block maps onto it one to one."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["ntp", "nbp", "par", "frame"] = "ntp"
    block: tuple[int, int, int] = (1, 1, 16)  # nbp: (bt, bh, bw)
    hybrid_prefix: int = 0  # nbp: first tokens predicted one at a time (NBP's UCF setting: 16)
    regions: int = 4  # par: R, a square number
    prefix: Literal["frame", "clip"] = "frame"  # par: sequential prefix per frame or per clip


class ErrorCorrectionConfig(BaseModel):
    """Cross-frame error correction: corrupt scales with a strength ramping over frames."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    mode: Literal["infinity", "legacy"] = Field(
        "infinity",
        description="infinity: near-miss FSQ changes, targets re-quantized from the continuous "
        "latent (the caller passes it); legacy: random codes on the leading scales, targets "
        "re-quantized from the quantized latent",
    )
    max_strength: float = Field(
        0.3,
        ge=0,
        le=1,
        description="at full ramp: legacy, the fraction of tokens replaced; infinity, the upper "
        "end of the uniform draw of the fraction of FSQ dimensions changed",
    )
    ramp_frames: int | None = Field(
        None, ge=1, description="frames to reach max_strength; None = T-1"
    )
    corrupt_scales: int = Field(
        2, ge=1, description="legacy: leading scales of each frame that are corrupted"
    )
    scales: list[int] | None = Field(
        None, description="infinity: indices of the scales corrupted; None = every scale"
    )

    def strengths(self, num_frames: int) -> torch.Tensor:
        """(T,) strength per frame: 0 for the first frame, rising linearly."""
        import torch

        ramp = self.ramp_frames or max(1, num_frames - 1)
        frames = torch.arange(num_frames, dtype=torch.float32)
        return self.max_strength * (frames / ramp).clamp(max=1.0)

    def check_scales(self, num_scales: int) -> None:
        """Raise if ``scales`` names a scale the tokenizer does not have."""
        bad = [k for k in self.scales or [] if not 0 <= k < num_scales]
        if bad:
            raise ValueError(
                f"error_correction.scales {self.scales}: scales {bad} do not exist; the "
                f"tokenizer has scales 0..{num_scales - 1}"
            )


class FrameMaskConfig(BaseModel):
    """Random frame mask: hide random earlier frames from later ones, per sample, in training."""

    model_config = ConfigDict(extra="forbid")

    prob: float = Field(0.0, ge=0, le=1, description="share of samples that get a frame mask")
    drop_prob: float = Field(0.5, ge=0, le=1, description="chance each earlier frame is hidden")


class LongContextConfig(BaseModel):
    """Frames older than `window` keep only their first `keep_scales` scales in the context."""

    model_config = ConfigDict(extra="forbid")

    window: int | None = Field(None, ge=0, description="None: every frame keeps every scale")
    keep_scales: int = Field(2, ge=1)


class VideoARConfig(BaseModel):
    """The multi-scale token layout (from the tokenizer's config) and VideoAR's switches."""

    model_config = ConfigDict(extra="forbid")

    levels: list[int] = Field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    scales: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    scale_gains: list[float] | None = None
    upsample_mode: str = "bilinear"
    latent_hw: tuple[int, int] = (16, 16)
    frame_context: Literal["full", "pooled"] = Field(
        "full",
        description="full: frame t+1's first step reads frame t's complete latent through H*W "
        "context positions; pooled: only its average at scale 0's shape (the first version)",
    )
    error_correction: ErrorCorrectionConfig = Field(default_factory=ErrorCorrectionConfig)
    frame_mask: FrameMaskConfig = Field(default_factory=FrameMaskConfig)
    long_context: LongContextConfig = Field(default_factory=LongContextConfig)


class FARConfig(BaseModel):
    """FAR: frame-autoregressive flow matching on continuous latents, with long short-term context.

    The latent layout (``latent_dim``, ``latent_hw``) comes from the tokenizer; the rest are FAR's
    switches (PAPERS.md: logit-normal time steps, 10% clean context frames, older frames patchified
    4x per side with their own projection).
    """

    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(6, ge=1, description="channels of the continuous latent (FSQ dim)")
    latent_hw: tuple[int, int] = Field((8, 8), description="(h, w) of one latent frame")
    patch: int = Field(1, ge=1, description="latent cells per side of a full-resolution token")
    long_patch: int = Field(
        4, ge=1, description="a long-term (compressed) token covers long_patch x long_patch "
        "full-resolution tokens (FAR: 4, so 16x fewer tokens per frame)"
    )  # fmt: skip
    short_window: int | None = Field(
        None, ge=1, description="frames a query sees at full resolution, itself included; older "
        "frames enter compressed. None: every frame at full resolution"
    )  # fmt: skip
    clean_context_prob: float = Field(
        0.1, ge=0, lt=1, description="training: share of frames given clean (time-step tag "
        "'clean'), left out of the loss, so the model learns to read clean context"
    )  # fmt: skip
    timestep_mean: float = Field(0.0, description="logit-normal time steps: mean of the logit")
    timestep_std: float = Field(1.0, gt=0, description="logit-normal time steps: std of the logit")
    latent_scale: float = Field(
        1.0, gt=0, description="the model works on latent * latent_scale (unit variance helps)"
    )
    head_layers: int = Field(2, ge=1, description="residual blocks of the flow-matching head")
    head_hidden: int | None = Field(None, ge=8, description="head width; None = n_embd")
    temporal_decay: float = Field(
        0.0, ge=0, description="FlexRoPE: attention bias -decay * (query frame - key frame) at "
        "sampling (0 = off, as FAR's code ships it); sampling may override it"
    )  # fmt: skip

    @model_validator(mode="after")
    def _check_patches(self) -> FARConfig:
        side = self.patch * self.long_patch
        if self.latent_hw[0] % side or self.latent_hw[1] % side:
            raise ValueError(
                f"far: latent frame {self.latent_hw} does not tile into long-term patches of "
                f"{side}x{side} cells (patch {self.patch} x long_patch {self.long_patch}); "
                "choose far.long_patch (or far.patch) dividing the latent side"
            )
        return self

    @property
    def full_grid(self) -> tuple[int, int]:
        """(rows, cols) of full-resolution tokens per frame."""
        return self.latent_hw[0] // self.patch, self.latent_hw[1] // self.patch

    @property
    def long_grid(self) -> tuple[int, int]:
        """(rows, cols) of long-term (compressed) tokens per frame."""
        side = self.patch * self.long_patch
        return self.latent_hw[0] // side, self.latent_hw[1] // side

    @property
    def tokens_per_frame(self) -> int:
        """Full-resolution tokens of one frame."""
        return self.full_grid[0] * self.full_grid[1]

    @property
    def long_tokens_per_frame(self) -> int:
        """Compressed tokens of one frame."""
        return self.long_grid[0] * self.long_grid[1]

    def context_tokens(self, num_frames: int) -> int:
        """Tokens of a training sequence of ``num_frames`` frames (class token excluded)."""
        full = num_frames if self.short_window is None else min(num_frames, self.short_window)
        return full * self.tokens_per_frame + (num_frames - full) * self.long_tokens_per_frame
