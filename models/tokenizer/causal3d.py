"""MAGVIT-v2-style causal 3D CNN encoder and decoder.

Causality is exact: every temporal padding goes in front (a copy of the first frame), and every
norm is per frame, so output frame i only ever sees input frames <= i. With T = 1 + 4n frames the
encoder's strided causal convs give 1 + n latent frames, the first one from frame 0 alone; the
decoder inverts this with depth-to-space (each latent frame becomes 2 frames, then the first
one, which only the padding produced, is dropped: 1 + n -> 2 + 2n -> 1 + 2n).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class CausalConv3d(nn.Module):
    """3D conv padded in time only at the front (first frame repeated), zeros in space."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1)
    ):
        super().__init__()
        self.time_pad = kernel - 1
        self.conv = nn.Conv3d(
            c_in, c_out, kernel, stride=stride, padding=(0, kernel // 2, kernel // 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C, T, H, W); with time stride s the output has 1 + (T - 1) // s frames.
        if self.time_pad > 0:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (C/G, H, W) of each frame: statistics across time would leak the future."""

    def __init__(self, channels: int, max_groups: int = 32):
        super().__init__(math.gcd(max_groups, channels), channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(x, "(b t) c h w -> b c t h w", b=b)


class ResBlock3d(nn.Module):
    """norm-SiLU-conv twice plus a (1x1x1-projected) skip."""

    def __init__(self, c_in: int, c_out: int, max_groups: int = 32):
        super().__init__()
        self.norm1 = FrameGroupNorm(c_in, max_groups)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = FrameGroupNorm(c_out, max_groups)
        self.conv2 = CausalConv3d(c_out, c_out)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Strided causal conv: 2x in space, and 2x in time (1 + 2m -> 1 + m frames) if `temporal`."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Conv to 4x (or 8x) channels, then depth-to-space; in time the first frame is dropped."""

    def __init__(self, c_in: int, c_out: int, temporal: bool):
        super().__init__()
        self.time_factor = 2 if temporal else 1
        self.conv = CausalConv3d(c_in, c_out * self.time_factor * 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)  # (B, C * st * 4, t, h, w)
        x = rearrange(
            x, "b (c st sh sw) t h w -> b c (t st) (h sh) (w sw)", st=self.time_factor, sh=2, sw=2
        )
        # The first latent frame stands for one input frame, not two: drop its padded twin.
        return x[:, :, self.time_factor - 1 :]


def _temporal_stages(num_stages: int, temporal_factor: int) -> list[bool]:
    """Which of the down/upsampling stages also resample time: the deepest log2(factor) ones."""
    num_temporal = int(math.log2(temporal_factor))
    return [stage >= num_stages - num_temporal for stage in range(num_stages)]


class Encoder(nn.Module):
    """Video (B, C, T, H, W) -> latent (B, D, 1 + (T - 1) / tf, H / sf, W / sf)."""

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        channels: list[int],
        num_res_blocks: int,
        temporal_factor: int,
        max_groups: int = 32,
    ):
        super().__init__()
        temporal = _temporal_stages(len(channels) - 1, temporal_factor)
        self.conv_in = CausalConv3d(in_channels, channels[0])
        blocks: list[nn.Module] = []
        c_prev = channels[0]
        for level, c in enumerate(channels):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock3d(c_prev, c, max_groups))
                c_prev = c
            if level < len(channels) - 1:
                blocks.append(Downsample(c, temporal[level]))
        self.blocks = nn.Sequential(*blocks)
        self.mid = nn.Sequential(
            *[ResBlock3d(c_prev, c_prev, max_groups) for _ in range(num_res_blocks)]
        )
        self.norm_out = FrameGroupNorm(c_prev, max_groups)
        self.conv_out = nn.Conv3d(c_prev, latent_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.conv_in(x))
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Latent (B, D, t, h, w) -> video (B, C, 1 + (t - 1) * tf, h * sf, w * sf)."""

    def __init__(
        self,
        out_channels: int,
        latent_dim: int,
        channels: list[int],
        num_res_blocks: int,
        temporal_factor: int,
        max_groups: int = 32,
    ):
        super().__init__()
        temporal = _temporal_stages(len(channels) - 1, temporal_factor)
        c_prev = channels[-1]
        self.conv_in = CausalConv3d(latent_dim, c_prev)
        self.mid = nn.Sequential(
            *[ResBlock3d(c_prev, c_prev, max_groups) for _ in range(num_res_blocks)]
        )
        blocks: list[nn.Module] = []
        for level in reversed(range(len(channels))):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock3d(c_prev, channels[level], max_groups))
                c_prev = channels[level]
            if level > 0:
                blocks.append(Upsample(c_prev, channels[level - 1], temporal[level - 1]))
                c_prev = channels[level - 1]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(c_prev, max_groups)
        self.conv_out = CausalConv3d(c_prev, out_channels)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))
        x = self.blocks(x)
        return self.conv_out(F.silu(self.norm_out(x)))
