"""Multi-scale residual FSQ per latent frame (VAR-style next-scale tokens for VideoAR).

For each latent frame, with the continuous latent `y` (code units, see `FSQ.continuous`) and
`acc = 0`, scale k (from coarse to fine) does:

    r_k   = area_down(y - acc, shape_k)          # what the coarser scales missed
    code  = FSQ(gain_k * r_k)                    # -> indices_k, codes in [-1, 1]
    acc  += up(code / gain_k, latent shape)      # accumulate in latent units

FSQ's grid is bounded and coarse (steps of 1/4 or 1/2 in code units), while residuals shrink
scale by scale; without `gain_k` the fine scales would round to zero and add nothing. The gains
are fixed numbers from the config, and the path holds no learned layer (unlike VAR's refining
conv), so `accumulate` and `next_scale_inputs` rebuild everything from indices and the config
alone: the generator needs no tokenizer weights.

Upsampling is bilinear by default: smooth, so a coarse scale does not paint block edges that the
next scale must then spend codes undoing (as "nearest" does), and without bicubic's ringing
(VAR's choice). On synthetic latents the three ended within a few percent of each other; the
mode is in the config ("bilinear", "bicubic", "nearest") and must match between tokenizer and
generator, like the gains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.tokenizer.config import UpsampleMode, check_quantizer, default_scale_gains
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


class MultiScaleFSQ(nn.Module):
    """Residual FSQ over a coarse-to-fine pyramid of each latent frame; holds no weights."""

    def __init__(
        self,
        levels: Sequence[int],
        scales: Sequence[int],
        gains: Sequence[float] | None = None,
        upsample_mode: UpsampleMode = "bilinear",
    ):
        super().__init__()
        check_quantizer(levels, scales, gains)
        gains = default_scale_gains(scales) if gains is None else list(gains)
        self.fsq = FSQ(levels)
        self.scales = tuple(int(s) for s in scales)
        self.gains = tuple(float(g) for g in gains)
        self.upsample_mode: UpsampleMode = upsample_mode

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
        y = rearrange(
            self.fsq.continuous(rearrange(z, "b d t h w -> b t h w d")), "b t h w d -> b d t h w"
        )
        with torch.no_grad():
            accumulated, indices = self.quantize_residual(y)
        # Value exactly `accumulated` (adding an exact 0), gradient identity to y.
        quantized = accumulated + (y - y.detach())
        return quantized, y, indices

    def quantize_residual(
        self, continuous: Tensor, accumulated: Tensor | None = None, start_scale: int = 0
    ) -> tuple[Tensor, list[Tensor]]:
        """Quantize what `accumulated` misses of `continuous` with scales start_scale.. K-1.

        Both are (B, D, t, h, w); returns the new accumulation and indices for those scales.
        Starting from a corrupted accumulation recomputes the later targets against it (the
        error-correction trick of VideoAR / Infinity).
        """
        b, _, t, h, w = continuous.shape
        y = rearrange(continuous.float(), "b d t h w -> (b t) d h w")
        acc = (
            torch.zeros_like(y)
            if accumulated is None
            else rearrange(accumulated.float(), "b d t h w -> (b t) d h w")
        )
        indices = []
        for k in range(start_scale, self.num_scales):
            shape_k = self.scale_shapes(h, w)[k]
            residual = area_downsample(y - acc, shape_k)  # (b t, d, h_k, w_k)
            codes = self.fsq(self.gains[k] * rearrange(residual, "n d h w -> n h w d"))
            indices.append(rearrange(self.fsq.codes_to_indices(codes), "(b t) h w -> b t h w", b=b))
            acc = acc + self._upsampled_scale(codes, k, (h, w))
        return rearrange(acc, "(b t) d h w -> b d t h w", b=b, t=t), indices

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
