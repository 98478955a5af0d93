"""Finite scalar quantization (FSQ): round each latent channel onto a small fixed grid.

Channel i has L_i levels. A value is first bounded with `tanh(z + shift) * half_l - offset`
(offset 0.5 for even L, so that zero is one of the L integer levels), rounded with a
straight-through gradient, then divided by `L_i // 2` so every code lies in [-1, 1]. The code
book is the product grid: prod(L_i) codes (8,8,8,5,5,5 -> 64,000), no learned parameters, so a
code's index and its vector convert both ways with mixed-radix arithmetic.

`round_to_grid` is the same grid without the tanh bound (clamp, then round): the multi-scale
quantizer uses it for residuals that a gain has already scaled, where a second tanh would shrink
every value by its slope (~0.86 at zero on 8 levels) and recover only part of each residual.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.tokenizer.config import check_quantizer

# Squeeze the tanh range a hair so that `round` never lands on L_i itself at saturation.
_BOUND_EPS = 1e-3


@functools.cache
def _radix(levels: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(place values, levels) as long tensors on `device`, made once per levels and device."""
    basis = torch.cumprod(torch.tensor((1, *levels[:-1]), dtype=torch.long), dim=0)
    return basis.to(device), torch.tensor(levels, dtype=torch.long).to(device)


def index_digits(indices: Tensor, levels: Sequence[int]) -> Tensor:
    """Indices (...) -> mixed-radix digits (..., D), digit i in [0, levels[i]): the inverse of
    index = sum_i digit_i * prod_{j<i} L_j."""
    basis, levels_t = _radix(tuple(int(level) for level in levels), indices.device)
    place = torch.div(indices.long().unsqueeze(-1), basis, rounding_mode="floor")
    return torch.remainder(place, levels_t)


def round_ste(x: Tensor) -> Tensor:
    """Round to the nearest integer; the gradient passes through as identity."""
    return x + (torch.round(x) - x).detach()


class FSQ(nn.Module):
    """Finite scalar quantizer over the last dimension of its input; holds no weights."""

    def __init__(self, levels: Sequence[int]):
        super().__init__()
        check_quantizer(levels)
        self.levels = tuple(int(level) for level in levels)
        levels_t = torch.tensor(self.levels, dtype=torch.float32)
        # Mixed-radix place values: index = sum_i digit_i * prod_{j<i} L_j.
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1], dtype=torch.long), dim=0)
        half_l = (levels_t - 1) * (1 - _BOUND_EPS) / 2
        offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
        # shift makes bound(0) == 0 exactly for even levels, whose grid is {-L/2, ..., L/2 - 1}
        # (the FSQ paper writes tan here, equal to first order; atanh keeps zero a fixed point).
        shift = torch.atanh(offset / half_l)
        # Non-persistent: these are functions of `levels`, not weights, so checkpoints omit them.
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_half_l", half_l, persistent=False)
        self.register_buffer("_offset", offset, persistent=False)
        self.register_buffer("_shift", shift, persistent=False)
        half_width = torch.div(levels_t, 2, rounding_mode="floor")
        self.register_buffer("_half_width", half_width, persistent=False)
        # The grid's end digits: {-L/2, ..., L/2 - 1} for even L, {-(L-1)/2, ..., (L-1)/2} odd.
        self.register_buffer("_low_digit", -half_width, persistent=False)
        self.register_buffer("_high_digit", levels_t - 1 - half_width, persistent=False)

    @property
    def dim(self) -> int:
        """Number of latent channels the quantizer expects."""
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        """Number of distinct codes: the product of the levels."""
        return math.prod(self.levels)

    def bound(self, z: Tensor) -> Tensor:
        """Squash (..., D) into the open interval that rounds onto each channel's grid."""
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def continuous(self, z: Tensor) -> Tensor:
        """The bounded latent in code units ([-1, 1]), before rounding: (..., D) -> (..., D)."""
        return self.bound(z.float()) / self._half_width

    def forward(self, z: Tensor) -> Tensor:
        """Quantize (..., D) to codes in [-1, 1] with a straight-through gradient."""
        # Always in float32: rounding bf16 values would put them on the wrong grid point.
        return round_ste(self.bound(z.float())) / self._half_width

    def round_to_grid(self, x: Tensor) -> Tensor:
        """Codes (..., D) nearest to x in code units, clamped to the grid's ends; gradient
        straight through (no tanh: a linear grid)."""
        # Gradient 1 up to half a step beyond the ends (where the value still rounds onto the
        # grid), 0 beyond: a clamped value does not move with its input.
        scaled = torch.clamp(
            x.float() * self._half_width, self._low_digit - 0.5, self._high_digit + 0.5
        )
        digits = torch.clamp(torch.round(scaled), self._low_digit, self._high_digit)
        return (scaled + (digits - scaled).detach()) / self._half_width

    def saturated(self, x: Tensor) -> Tensor:
        """True where x (..., D) in code units lies over half a step beyond the grid's ends, so
        `round_to_grid` clamps it (the part beyond is lost to this scale)."""
        digits = x.float() * self._half_width
        return (digits < self._low_digit - 0.5) | (digits > self._high_digit + 0.5)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Codes (..., D) on the grid -> indices (...) in [0, codebook_size)."""
        digits = torch.round(codes.float() * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Indices (...) -> codes (..., D) in [-1, 1]."""
        digits = index_digits(indices, self.levels)
        return (digits.float() - self._half_width) / self._half_width

    def zero_index(self) -> int:
        """Index of the all-zeros code, the one a too-small input rounds to."""
        return int(self.codes_to_indices(torch.zeros(self.dim, device=self._basis.device)))
