"""Reconstruction and codebook metrics.

PSNR and SSIM take videos (B, C, T, H, W) together with their value range, (-1, 1) by default
(the tokenizer's range); both map the range onto [0, 1] first, so the numbers are the usual ones
for 8-bit video scaled to [0, 1] whatever the input convention. Both return one value per video
(B,); average them yourself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def _to_unit_range(x: Tensor, value_range: tuple[float, float]) -> Tensor:
    low, high = value_range
    return ((x.float() - low) / (high - low)).clamp(0.0, 1.0)


def psnr(
    reconstruction: Tensor, target: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)
) -> Tensor:
    """Peak signal-to-noise ratio in dB over each whole video: (B, ...) -> (B,)."""
    x, y = _to_unit_range(reconstruction, value_range), _to_unit_range(target, value_range)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    reconstruction: Tensor,
    target: Tensor,
    value_range: tuple[float, float] = (-1.0, 1.0),
    window: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian 11x11, sigma 1.5) per frame and channel,
    averaged over each video: (B, C, T, H, W) -> (B,)."""
    b = reconstruction.shape[0]
    x = rearrange(_to_unit_range(reconstruction, value_range), "b c t h w -> (b t c) 1 h w")
    y = rearrange(_to_unit_range(target, value_range), "b c t h w -> (b t c) 1 h w")
    window = min(window, x.shape[-1], x.shape[-2])  # small frames: shrink the window to fit
    g = _gaussian_window(window, sigma, x.device)

    def blur(v: Tensor) -> Tensor:  # separable Gaussian, "valid" like the reference code
        v = F.conv2d(v, g.view(1, 1, 1, -1))
        return F.conv2d(v, g.view(1, 1, -1, 1))

    c1, c2 = 0.01**2, 0.03**2  # (K * data range)^2 with data range 1
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.reshape(b, -1).mean(dim=1)


def code_usage(
    indices: Tensor | Sequence[Tensor], vocab_size: int, zero_index: int | None = None
) -> dict[str, Tensor]:
    """Usage statistics of a batch of token ids: one tensor, or one per scale.

    A list of per-scale tensors gives the statistics over all of them plus the same per scale
    under "<name>/scale<k>".

    usage: distinct codes / vocab_size (a batch of N tokens can reach at most N / vocab_size);
    usage_of_ceiling: distinct codes / min(N, vocab_size), against what this batch could reach
    (a 1x1 scale over 16 frames has a ceiling of 16 codes, not 64,000);
    perplexity: exp(entropy) of the empirical code distribution, the effective number of codes;
    zero_fraction (if zero_index is given): share of tokens on the all-zeros code, which is
    where a residual scale whose gain is too small collapses.
    """
    if not isinstance(indices, Tensor):
        stats = code_usage(torch.cat([i.flatten() for i in indices]), vocab_size, zero_index)
        for k, index_k in enumerate(indices):
            stats.update(
                {
                    f"{name}/scale{k}": v
                    for name, v in code_usage(index_k, vocab_size, zero_index).items()
                }
            )
        return stats
    flat = indices.flatten()
    # Counts of the codes present only: a batch holds far fewer tokens than the 64,000 codes,
    # and a bincount over the whole vocabulary was most of this function's time in training.
    counts = torch.unique(flat, return_counts=True)[1].float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs)).sum()
    distinct = torch.tensor(float(counts.numel()), device=flat.device)
    stats = {
        "code_usage": distinct / vocab_size,
        "code_usage_of_ceiling": distinct / max(1, min(flat.numel(), vocab_size)),
        "code_perplexity": entropy.exp(),
    }
    if zero_index is not None:
        stats["zero_code_fraction"] = (flat == zero_index).float().mean()
    return stats
