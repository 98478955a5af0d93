"""Multi-scale residual FSQ per latent frame (VAR-style next-scale tokens for VideoAR).

For each latent frame, with the continuous latent `y` (code units, see `FSQ.continuous`) and
`acc = 0`, scale k (from coarse to fine) does:

    r_k   = area_down(y - acc, shape_k)          # what the coarser scales missed
    code  = round_to_grid(gain_k * r_k)          # clamp + round on FSQ's grid -> indices_k
    acc  += up(code / gain_k, latent shape)      # accumulate in latent units

The residual goes onto FSQ's grid linearly: `y` is already bounded by FSQ's tanh once, and a
second tanh on the gained residual would recover only ~86% of it per scale (its slope at zero).

FSQ's grid is bounded and coarse (steps of 1/4 or 1/2 in code units), while residuals shrink
scale by scale, so each scale has its own gain. A fixed gain fits one latent amplitude only (the
encoder sets the amplitude freely), so with `calibrate` the gains follow the residuals: every
training forward folds each scale's residual RMS into a running average (like BatchNorm's running
statistics) and sets gain_k = 1 / (range_rms * rms_k), so the grid's ends sit `range_rms` RMS out;
eval mode freezes them. 3 RMS, not the 2 that suited synthetic 1/f latents: a trained encoder's
residuals are heavy-tailed, and on a demo tokenizer's held-out latents clamped tails were most of
the error (latent MSE 0.0094 at 3 against 0.0153 at 2; 0.0107 at 3.5, 0.0132 at 4, where the
5-level channels' steps get too coarse).
The gains are a buffer (saved with the weights) and the tokenizer writes them into its config, so
`accumulate` and `next_scale_inputs` still rebuild everything from indices and the config alone:
the generator needs no tokenizer weights.

Upsampling is bilinear by default: smooth, so a coarse scale does not paint block edges that the
next scale must then spend codes undoing (as "nearest" does), and without bicubic's ringing
(VAR's choice). On synthetic latents the three ended within a few percent of each other; the
mode is in the config ("bilinear", "bicubic", "nearest") and must match between tokenizer and
generator, like the gains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.tokenizer.config import (
    DEFAULT_GAIN_RANGE_RMS,
    UpsampleMode,
    check_quantizer,
    default_scale_gains,
)
from models.tokenizer.fsq import FSQ


def scale_shapes(scales: Sequence[int], height: int, width: int) -> list[tuple[int, int]]:
    """(h_k, w_k) of every scale for an h x w latent frame.

    `scales` are side lengths on a grid whose finest side is scales[-1]; a latent of another size
    or aspect gets proportional shapes (round half up, at least 1), and the last scale is always
    the full latent, so scales (1, 2, 4, 8, 16) on a 16x16 latent are exactly 1x1 ... 16x16.
    """
    finest = scales[-1]
    shapes = [
        (max(1, int(s * height / finest + 0.5)), max(1, int(s * width / finest + 0.5)))
        for s in scales[:-1]
    ]
    return shapes + [(height, width)]


def area_downsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Average-pool (N, C, h, w) to `size`; identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.adaptive_avg_pool2d(x, size)


def upsample(x: Tensor, size: tuple[int, int], mode: UpsampleMode) -> Tensor:
    """Resize (N, C, h_k, w_k) up to `size`; identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


# Weight of the newest batch in the running residual RMS: ~20 steps of memory, enough to follow
# the encoder's amplitude while it moves early in training.
GAIN_MOMENTUM = 0.95
# Floor of the running RMS, so a scale with nothing left to code does not get an infinite gain.
_MIN_RMS = 1e-4


@dataclass(frozen=True)
class ScaleStatistics:
    """Per-scale health of one quantization pass; every tensor is (K,), scale k at index k."""

    residual_rms: Tensor  # RMS of the residual scale k quantizes (before its gain)
    saturation: Tensor  # share of scale k's digits clamped at the grid's ends
    latent_mse: Tensor  # MSE of the accumulated latent against the continuous one after scale k


class MultiScaleFSQ(nn.Module):
    """Residual FSQ over a coarse-to-fine pyramid of each latent frame; its only state is the
    per-scale gains (and their running residual RMS), no learned weights."""

    def __init__(
        self,
        levels: Sequence[int],
        scales: Sequence[int],
        gains: Sequence[float] | None = None,
        upsample_mode: UpsampleMode = "bilinear",
        calibrate: bool = False,
        range_rms: float = DEFAULT_GAIN_RANGE_RMS,
    ):
        super().__init__()
        check_quantizer(levels, scales, gains)
        gains = default_scale_gains(scales) if gains is None else list(gains)
        if range_rms <= 0:
            raise ValueError(f"range_rms={range_rms}: must be positive")
        self.fsq = FSQ(levels)
        self.scales = tuple(int(s) for s in scales)
        self.upsample_mode: UpsampleMode = upsample_mode
        self.calibrate = calibrate
        self.range_rms = float(range_rms)
        # Calibrated gains define what every token means, so they travel with the weights; fixed
        # ones are a function of the config (and the generator's copy adds nothing to its state).
        gains_t = torch.tensor(gains, dtype=torch.float32)
        self.register_buffer("gains", gains_t, persistent=calibrate)
        self.register_buffer("residual_rms", 1.0 / (self.range_rms * gains_t), persistent=calibrate)
        self.register_buffer(
            "observed_batches", torch.zeros(1, dtype=torch.long), persistent=calibrate
        )

    def gain_values(self) -> list[float]:
        """The gains as Python floats (exactly the float32 buffer, so a config holding them
        rebuilds the same quantizer bit for bit)."""
        return [float(g) for g in self.gains.tolist()]

    @property
    def num_scales(self) -> int:
        """Number of scales K (decoding steps per latent frame for next-scale generation)."""
        return len(self.scales)

    @property
    def codebook_size(self) -> int:
        """Number of distinct token ids per scale."""
        return self.fsq.codebook_size

    def zero_index(self) -> int:
        """Index of the all-zeros code (where a scale with too small a gain collapses)."""
        return self.fsq.zero_index()

    def scale_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h_k, w_k) of every scale for an h x w latent frame."""
        return scale_shapes(self.scales, height, width)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Encoder output (B, D, t, h, w) -> (quantized, continuous, indices per scale).

        quantized and continuous are (B, D, t, h, w) in code units; indices[k] is
        (B, t, h_k, w_k). The gradient of `quantized` passes straight through to `continuous`.
        """
        y = self.continuous(z)
        with torch.no_grad():
            accumulated, indices = self.quantize_residual(y)
        # Value exactly `accumulated` (adding an exact 0), gradient identity to y.
        quantized = accumulated + (y - y.detach())
        return quantized, y, indices

    def continuous(self, z: Tensor) -> Tensor:
        """Encoder output (B, D, t, h, w) -> the bounded latent in code units, same shape."""
        return rearrange(
            self.fsq.continuous(rearrange(z, "b d t h w -> b t h w d")), "b t h w d -> b d t h w"
        )

    def quantize_residual(
        self, continuous: Tensor, accumulated: Tensor | None = None, start_scale: int = 0
    ) -> tuple[Tensor, list[Tensor]]:
        """Quantize what `accumulated` misses of `continuous` with scales start_scale.. K-1.

        Both are (B, D, t, h, w); returns the new accumulation and indices for those scales.
        Starting from a corrupted accumulation recomputes the later targets against it (the
        error-correction trick of VideoAR / Infinity).
        """
        accumulated, indices, _ = self._residual_pass(continuous, accumulated, start_scale)
        return accumulated, indices

    @torch.no_grad()
    def statistics(self, continuous: Tensor) -> ScaleStatistics:
        """Per-scale residual RMS, saturation and latent error of quantizing `continuous`."""
        return self._residual_pass(continuous, None, 0, measure=True)[2]

    @torch.no_grad()
    def observe(self, continuous: Tensor) -> ScaleStatistics:
        """Fold this batch's per-scale residual RMS into the running average and, when
        calibrating, move the gains to it; returns the batch's statistics (measured with the
        gains it was quantized with). The training forward calls it; eval never does."""
        stats = self.statistics(continuous)
        first = int(self.observed_batches.item()) == 0
        momentum = 0.0 if first else GAIN_MOMENTUM
        self.residual_rms.mul_(momentum).add_((1 - momentum) * stats.residual_rms)
        self.observed_batches.add_(1)
        if self.calibrate:
            self.gains.copy_(1.0 / (self.range_rms * self.residual_rms.clamp_min(_MIN_RMS)))
        return stats

    def _residual_pass(
        self,
        continuous: Tensor,
        accumulated: Tensor | None,
        start_scale: int,
        measure: bool = False,
    ) -> tuple[Tensor, list[Tensor], ScaleStatistics | None]:
        """The one residual loop behind quantize_residual and statistics."""
        b, _, t, h, w = continuous.shape
        y = rearrange(continuous.float(), "b d t h w -> (b t) d h w")
        acc = (
            torch.zeros_like(y)
            if accumulated is None
            else rearrange(accumulated.float(), "b d t h w -> (b t) d h w")
        )
        indices, rms, saturation, mse = [], [], [], []
        for k in range(start_scale, self.num_scales):
            shape_k = self.scale_shapes(h, w)[k]
            residual = area_downsample(y - acc, shape_k)  # (b t, d, h_k, w_k)
            gained = self.gains[k] * rearrange(residual, "n d h w -> n h w d")
            codes = self.fsq.round_to_grid(gained)
            indices.append(rearrange(self.fsq.codes_to_indices(codes), "(b t) h w -> b t h w", b=b))
            acc = acc + self._upsampled_scale(codes, k, (h, w))
            if measure:
                rms.append(residual.pow(2).mean().sqrt())
                saturation.append(self.fsq.saturated(gained).float().mean())
                mse.append((acc - y).pow(2).mean())
        stats = None
        if measure:
            stats = ScaleStatistics(torch.stack(rms), torch.stack(saturation), torch.stack(mse))
        return rearrange(acc, "(b t) d h w -> b d t h w", b=b, t=t), indices, stats

    def _upsampled_scale(self, codes: Tensor, k: int, size: tuple[int, int]) -> Tensor:
        """Codes (N, h_k, w_k, D) of scale k -> their contribution (N, D, h, w) in latent units."""
        # Kept as the single code path that both quantizing and rebuilding go through, so the
        # two agree bit for bit.
        return upsample(
            rearrange(codes, "n h w d -> n d h w") / self.gains[k], size, self.upsample_mode
        )

    def accumulate(self, indices: Sequence[Tensor], latent_hw: tuple[int, int]) -> Tensor:
        """Latent (B, D, t, h, w) after the first len(indices) scales, from indices alone.

        indices[k] is (B, t, h_k, w_k); with all K scales this equals the quantized latent.
        """
        if not 0 < len(indices) <= self.num_scales:
            raise ValueError(
                f"got indices for {len(indices)} scales; the quantizer has 1..{self.num_scales}"
            )
        h, w = latent_hw
        b, t = indices[0].shape[:2]
        acc = torch.zeros(b * t, self.fsq.dim, h, w, device=indices[0].device)
        for k, (index_k, shape_k) in enumerate(zip(indices, self.scale_shapes(h, w), strict=False)):
            if tuple(index_k.shape[-2:]) != shape_k:
                raise ValueError(
                    f"indices for scale {k} have shape {tuple(index_k.shape[-2:])}; "
                    f"a {h}x{w} latent needs {shape_k}"
                )
            codes = self.fsq.indices_to_codes(rearrange(index_k, "b t h w -> (b t) h w"))
            acc = acc + self._upsampled_scale(codes, k, (h, w))
        return rearrange(acc, "(b t) d h w -> b d t h w", b=b, t=t)

    def next_scale_input(self, accumulated: Tensor, k: int) -> Tensor:
        """Input for predicting scale k: the cumulative latent (B, D, t, h, w) area-downsampled."""
        b, _, _, h, w = accumulated.shape
        small = area_downsample(
            rearrange(accumulated, "b d t h w -> (b t) d h w"), self.scale_shapes(h, w)[k]
        )
        return rearrange(small, "(b t) d h w -> b d t h w", b=b)

    def next_scale_inputs(
        self, indices: Sequence[Tensor], latent_hw: tuple[int, int]
    ) -> list[Tensor]:
        """Teacher-forcing inputs for scales 1..K-1 from all K scales' indices: [(B, D, t, h_k, w_k)].

        Entry k-1 is the accumulation of scales 0..k-1 area-downsampled to scale k's shape; scale
        0 has no input (the generator starts it from its condition).
        """
        h, w = latent_hw
        b, t = indices[0].shape[:2]
        acc = torch.zeros(b * t, self.fsq.dim, h, w, device=indices[0].device)
        inputs = []
        for k in range(self.num_scales - 1):
            codes = self.fsq.indices_to_codes(rearrange(indices[k], "b t h w -> (b t) h w"))
            acc = acc + self._upsampled_scale(codes, k, (h, w))
            inputs.append(
                self.next_scale_input(rearrange(acc, "(b t) d h w -> b d t h w", b=b, t=t), k + 1)
            )
        return inputs
