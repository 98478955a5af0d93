"""Configs of the tokenizer, its losses and its discriminator: pydantic only, no torch.

They live apart from the modules they configure so that loading a config (arvid's settings, a
saved config.json) does not import torch; building a module from one does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from models.tokenizer.fsq import FSQ
    from models.tokenizer.multiscale import MultiScaleFSQ

UpsampleMode = Literal["bilinear", "bicubic", "nearest"]
# Where a calibrated multi-scale quantizer puts its grid's ends, in residual RMS (multiscale.py
# says why 3): the one default that both the config and MultiScaleFSQ read.
DEFAULT_GAIN_RANGE_RMS = 3.0


def default_scale_gains(scales: Sequence[int]) -> list[float]:
    """Per-scale gains sqrt(s_k / s_0): doubling a scale's side multiplies its gain by sqrt(2).

    The fixed gains of an uncalibrated quantizer, and the starting point of a calibrated one.

    A gain trades range for resolution: scale k's codes cover +-1/g_k in steps of 1/(g_k L/2).
    Too small and fine residuals round to the zero code; too large and they saturate and the
    last scale's error stays. On synthetic latents with 1/f-like spectra, sqrt growth was near
    the lowest final error for both (1, 2, 4, 8, 16) and VAR's ten scales, where 2**k saturated.
    """
    return [math.sqrt(s / scales[0]) for s in scales]


def check_quantizer(
    levels: Sequence[int], scales: Sequence[int] | None = None, gains: Sequence[float] | None = None
) -> None:
    """Raise ValueError naming the value when FSQ levels, residual scales or gains cannot work.

    The quantizers check their arguments with this too; the config checks without building one,
    so that validating a config does not import torch.
    """
    if len(levels) == 0 or any(int(level) < 2 for level in levels):
        raise ValueError(f"FSQ levels {list(levels)}: need at least one level, each >= 2")
    if scales is None:
        return
    if len(scales) == 0 or any(int(s) < 1 for s in scales) or list(scales) != sorted(scales):
        raise ValueError(f"scales {list(scales)}: need positive sides in increasing order")
    gains = default_scale_gains(scales) if gains is None else list(gains)
    if len(gains) != len(scales) or any(g <= 0 for g in gains):
        raise ValueError(f"scale gains {gains}: need one positive gain per scale ({len(scales)})")


class DiscriminatorConfig(BaseModel):
    """Width and depth of the PatchGAN discriminator."""

    model_config = ConfigDict(extra="forbid")

    in_channels: int = 3
    base_channels: int = 64
    # Strided layers (each halves T, H and W); the receptive field grows with them.
    num_layers: int = 3
    max_norm_groups: int = 32


class LossConfig(BaseModel):
    """Weights and schedule of the tokenizer losses."""

    model_config = ConfigDict(extra="forbid")

    l1_weight: float = 1.0
    l2_weight: float = 1.0
    # VGG16 safetensors file (see perceptual.py); None turns the perceptual loss off.
    perceptual_weights_path: str | None = None
    perceptual_weight: float = 0.1
    gan_weight: float = Field(0.1, ge=0, description="0: reconstruction only, no GAN at any step")
    gan_start_step: int = 2000
    adaptive_weight_max: float = 1e4
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)


class TokenizerConfig(BaseModel):
    """Architecture of a VideoTokenizer; a YAML mapping validates straight onto it."""

    model_config = ConfigDict(extra="forbid")

    in_channels: int = 3
    base_channels: int = 64  # ~48M weights with the other defaults; 4 gives a CPU-test toy
    # One multiplier per resolution level; there are log2(spatial_factor) + 1 levels.
    channel_multipliers: list[int] = [1, 2, 2, 4]
    num_res_blocks: int = 2
    max_norm_groups: int = 32
    # DC-AE-style weightless shortcuts around every resampling step (see causal3d.py).
    shortcuts: bool = True
    # A learned 1x1 projection from the decoder's last features straight to pixels, beside its
    # normed output conv: per-frame norms there hide absolute colour, which the small CPU models
    # then took thousands of steps to recover (see causal3d.py). Saved configs from before it
    # existed load with it off (load_tokenizer_from_dir).
    linear_output: bool = True
    temporal_factor: int = 4
    spatial_factor: int = 8
    # Pixels folded into channels (space-to-depth) before the first conv and unfolded after the
    # last one, as Cosmos's tokenizers patchify before their convs: the full-resolution level,
    # where a narrow CPU model spends most of its time on its least efficient convs, goes away.
    # spatial_factor = patch_size * 2**(len(channel_multipliers) - 1).
    patch_size: int = 1
    levels: list[int] = [8, 8, 8, 5, 5, 5]
    # None: single-scale FSQ. Otherwise side lengths, coarse to fine, of the residual scales
    # (e.g. [1, 2, 4, 8, 16] for a 16x16 latent); see multiscale.scale_shapes for other sizes.
    scales: list[int] | None = None
    # Gain applied to each scale's residual before rounding; None: sqrt(s_k / s_0), see multiscale.py.
    # With calibrate_gains these are the starting gains, and a saved tokenizer's config holds the
    # calibrated ones (the generator rebuilds tokens from them).
    scale_gains: list[float] | None = None
    # Follow each scale's residual RMS during training (frozen in eval): the grid's ends sit
    # gain_range_rms RMS out. False: the gains stay as given.
    calibrate_gains: bool = True
    gain_range_rms: float = Field(DEFAULT_GAIN_RANGE_RMS, gt=0)
    upsample_mode: UpsampleMode = "bilinear"

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        stages = len(self.channel_multipliers) - 1
        if not _power_of_two(self.patch_size):
            raise ValueError(f"patch_size={self.patch_size}: must be a power of two")
        if self.spatial_factor < 2 or self.patch_size * 2**stages != self.spatial_factor:
            raise ValueError(
                f"spatial_factor={self.spatial_factor}: must be a power of two with "
                f"log2(spatial_factor / patch_size) + 1 channel_multipliers "
                f"(patch_size={self.patch_size}); got {len(self.channel_multipliers)}"
            )
        if not _power_of_two(self.temporal_factor):
            raise ValueError(f"temporal_factor={self.temporal_factor}: must be a power of two")
        if self.temporal_factor > 2**stages:
            raise ValueError(
                f"temporal_factor={self.temporal_factor}: at most {2**stages}, the conv stages' "
                f"spatial_factor / patch_size (time is downsampled in the same stages as space)"
            )
        if self.num_res_blocks < 1 or self.base_channels < 1:
            raise ValueError("num_res_blocks and base_channels must be >= 1")
        if self.scale_gains is not None and (
            self.scales is None or len(self.scale_gains) != len(self.scales)
        ):
            raise ValueError(
                f"scale_gains {self.scale_gains}: need one gain per scale (scales={self.scales})"
            )
        if self.scales is not None and self.scale_gains is None:
            # Written out so that a saved config.json pins the gains: tokens mean nothing without them.
            self.scale_gains = default_scale_gains(self.scales)
        check_quantizer(self.levels, self.scales, self.scale_gains)
        return self

    @property
    def channels(self) -> list[int]:
        """Channel width of each resolution level."""
        return [self.base_channels * m for m in self.channel_multipliers]

    # The clip-shape rule, written once: T = 1 + temporal_factor * n frames (the first frame
    # stands alone), height and width multiples of spatial_factor.
    def frames_fit(self, frames: int) -> bool:
        """True when a clip of `frames` frames can be encoded (frames = 1 + temporal_factor * n)."""
        return frames >= 1 and (frames - 1) % self.temporal_factor == 0

    def side_fits(self, size: int) -> bool:
        """True when a height or width of `size` pixels can be encoded (a multiple of spatial_factor)."""
        return size >= self.spatial_factor and size % self.spatial_factor == 0

    def frames_near(self, frames: int) -> str:
        """Valid frame counts just below and above `frames`, for error messages ("13 or 17")."""
        return _nearby(frames - 1, self.temporal_factor, 1)

    def sides_near(self, size: int) -> str:
        """Valid heights/widths just below and above `size`, for error messages ("56 or 64")."""
        return _nearby(size, self.spatial_factor, 0)

    def check_clip_shape(self, frames: int, height: int, width: int) -> None:
        """Raise ValueError naming the size and the rule if a T x H x W clip cannot be encoded."""
        if not self.frames_fit(frames):
            raise ValueError(
                f"T={frames} frames: the tokenizer needs T = 1 + {self.temporal_factor}n "
                f"(e.g. {self.frames_near(frames)})"
            )
        for name, size in (("H", height), ("W", width)):
            if not self.side_fits(size):
                raise ValueError(
                    f"{name}={size}: the tokenizer needs {name} divisible by "
                    f"{self.spatial_factor} (e.g. {self.sides_near(size)})"
                )

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the latent grid of a T x H x W clip; ValueError if it cannot be encoded."""
        self.check_clip_shape(frames, height, width)
        return (
            1 + (frames - 1) // self.temporal_factor,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def make_quantizer(self) -> FSQ | MultiScaleFSQ:
        """The weightless quantizer this config describes; the generator builds it without the
        tokenizer's weights (move it with .to(device): its constants are buffers)."""
        from models.tokenizer.fsq import FSQ
        from models.tokenizer.multiscale import MultiScaleFSQ

        if self.scales is None:
            return FSQ(self.levels)
        return MultiScaleFSQ(
            self.levels,
            self.scales,
            self.scale_gains,
            self.upsample_mode,
            calibrate=self.calibrate_gains,
            range_rms=self.gain_range_rms,
        )

    def full_pyramid_side(self) -> int | None:
        """Smallest square side in pixels whose latent keeps every scale on its own grid
        (finest scale = latent side); None for single-scale FSQ, which has no pyramid."""
        return None if self.scales is None else self.scales[-1] * self.spatial_factor


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _nearby(size: int, step: int, offset: int) -> str:
    """The valid sizes offset + step * n just below and above `size` + offset, for error messages."""
    below = size // step * step
    options = [v + offset for v in (below, below + step) if v > 0 or (offset and v >= 0)]
    return " or ".join(str(v) for v in options)
