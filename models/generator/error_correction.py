"""Cross-frame error correction for next-scale training: corrupt the tokens a model reads, and
re-derive the targets it must predict from what it read.

Two conventions, selected by ``ErrorCorrectionConfig.mode``:

- ``"infinity"`` (Infinity's bitwise self-correction, for FSQ): scale by scale, the target is
  the residual FSQ of the tokenizer's **continuous** latent against the accumulation of the
  (possibly corrupted) coarser inputs; the input of a corrupted scale changes a random subset
  of FSQ dimensions by one level (a near miss, clamped to the level range), the subset's share
  drawn uniform in [0, s_t] per sample, frame and scale. With no corruption the targets are the
  tokenizer's own tokens, bit for bit, so untouched frames keep their exact tokens.
- ``"legacy"`` (arvid's first version, kept for the ablation): a fixed fraction s_t of the
  tokens of the leading ``corrupt_scales`` scales becomes random codes, and targets of frames
  with a replaced token are re-quantized from the *quantized* latent (the sum of all scales).

s_t ramps over frames: ``max_strength * min(1, t / ramp_frames)``, 0 for the first frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.generator.config import ErrorCorrectionConfig
from models.tokenizer.fsq import FSQ
from models.tokenizer.multiscale import MultiScaleFSQ


def near_miss(
    fsq: FSQ,
    indices: torch.Tensor,
    fraction: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Move each FSQ dimension of each token one level up or down with probability ``fraction``
    (broadcast against ``indices``), clamped to the level range: FSQ's analogue of a bit flip."""
    levels = torch.tensor(fsq.levels, device=indices.device)  # (D,)
    half = torch.div(levels, 2, rounding_mode="floor")
    digits = torch.round(fsq.indices_to_codes(indices) * half + half)  # (..., D) in [0, L-1]
    change = torch.rand(digits.shape, device=indices.device, generator=generator)
    change = change < fraction[..., None]
    step = torch.randint(0, 2, digits.shape, device=indices.device, generator=generator) * 2 - 1
    digits = torch.minimum((digits + change * step).clamp(min=0), levels - 1)
    return fsq.codes_to_indices((digits - half) / half)


def corrupt_infinity(
    quantizer: MultiScaleFSQ,
    continuous: torch.Tensor,
    config: ErrorCorrectionConfig,
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(input indices, target indices) per scale from the continuous latent (B, D, T, H, W)."""
    B, _, T, H, W = continuous.shape
    device = continuous.device
    strength = config.strengths(T).to(device)  # (T,)
    corrupted_scales = set(range(quantizer.num_scales) if config.scales is None else config.scales)
    inputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for k in range(quantizer.num_scales):
        # Scale k's target: what the inputs so far miss of the continuous latent.
        read = quantizer.accumulate(inputs, (H, W)) if k else None
        target = quantizer.quantize_residual(continuous, read, start_scale=k)[1][0]
        corrupted = target
        if k in corrupted_scales:
            fraction = torch.rand(B, T, device=device, generator=generator) * strength
            corrupted = near_miss(quantizer.fsq, target, fraction[:, :, None, None], generator)
        inputs.append(corrupted)
        targets.append(target)
    return inputs, targets


def corrupt_legacy(
    quantizer: MultiScaleFSQ,
    indices: Sequence[torch.Tensor],
    config: ErrorCorrectionConfig,
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(input indices, target indices) per scale, re-quantizing the quantized latent."""
    B, T, H, W = indices[-1].shape
    device = indices[0].device
    strength = config.strengths(T).to(device)[None, :, None, None]  # (1, T, 1, 1)
    signal = quantizer.accumulate(indices, (H, W))  # what the tokens encode
    inputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    changed = torch.zeros(B, T, dtype=torch.bool, device=device)  # any replaced token so far
    for k in range(quantizer.num_scales):
        target = indices[k]
        if k > 0 and bool(changed.any()):
            acc = quantizer.accumulate(inputs, (H, W))
            _, recomputed = quantizer.quantize_residual(signal, acc, start_scale=k)
            target = torch.where(changed[:, :, None, None], recomputed[0], target)
        corrupted = target
        if k < config.corrupt_scales:
            draw = torch.rand(target.shape, device=device, generator=generator)
            noise = torch.randint(
                0, quantizer.codebook_size, target.shape, device=device, generator=generator
            )
            replace = draw < strength
            corrupted = torch.where(replace, noise, target)
            changed |= (replace & (noise != target)).flatten(2).any(dim=2)
        inputs.append(corrupted)
        targets.append(target)
    return inputs, targets
