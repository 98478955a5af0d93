"""FAR's time-step embedding and flow-matching head.

The head turns the backbone's hidden state of a token into the velocity of that token's latent
patch, conditioned on the frame's time step by adaptive layer norm (DiT/MAR style): a few residual
MLP blocks whose norms are shifted and scaled by the time embedding. Output and modulation layers
start at zero, so an untrained head predicts zero velocity.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(…,) float time steps in [0, 1] -> (…, dim) sinusoidal features of 1000·t (DiT's scale)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[..., None] * freqs  # (…, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    """(…,) time steps -> (…, C): sinusoid, then a two-layer MLP."""

    def __init__(self, n_embd: int, features: int = 256) -> None:
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, n_embd), nn.SiLU(), nn.Linear(n_embd, n_embd))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(…,) -> (…, C)."""
        return self.mlp(sinusoid(t, self.features).to(self.mlp[0].weight.dtype))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


class HeadBlock(nn.Module):
    """Residual MLP block with adaLN from the time embedding."""

    def __init__(self, width: int, cond: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Linear(cond, 3 * width)  # shift, scale, gate
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(…, width), (…, cond) -> (…, width)."""
        shift, scale, gate = self.ada(F.silu(c)).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class FlowHead(nn.Module):
    """(hidden (…, C), time embedding (…, C)) -> velocity (…, out) of one latent patch."""

    def __init__(self, n_embd: int, width: int, out: int, layers: int) -> None:
        super().__init__()
        self.inp = nn.Linear(n_embd, width)
        self.blocks = nn.ModuleList(HeadBlock(width, n_embd) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(n_embd, 2 * width)
        self.out = nn.Linear(width, out)
        for layer in (self.final_ada, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """(…, C), (…, C) -> (…, out)."""
        c = hidden + time  # the backbone's view of the token, told the noise level again
        x = self.inp(hidden)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(x), shift, scale))
