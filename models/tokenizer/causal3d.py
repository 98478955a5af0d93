"""MAGVIT-v2-style causal 3D CNN encoder and decoder.

Causality is exact: every temporal padding goes in front (a copy of the first frame), and every
norm is per frame, so output frame i only ever sees input frames <= i. With T = 1 + 4n frames the
encoder's strided causal convs give 1 + n latent frames, the first one from frame 0 alone; the
decoder inverts this with depth-to-space (each latent frame becomes 2 frames, then the first
one, which only the padding produced, is dropped: 1 + n -> 2 + 2n -> 1 + 2n).

Shortcuts (on by default) follow DC-AE's residual autoencoding: every resampling step adds a
weightless path beside its conv -- space(-time)-to-channel then channel averaging in the encoder,
channel duplication then channel(-time)-to-space in the decoder, and the same channel resizing
around the latent. The resampling convs and the last conv of every residual branch start at zero, so
at initialisation the autoencoder is the learned input/output convs around an area down/up-
sampler: colour and layout reach the output from the first step. Without this the tiny CPU
models spent hundreds of steps learning to carry a flat background colour through 8x
compression (held-out PSNR stayed below that of each clip's mean colour); see the tokenizer
bench in the README for the measured effect. The time shortcut is causal like the
convs: the first frame is repeated once in front before frames are paired.

The decoder's output conv sees its features through a per-frame GroupNorm, which divides out each
frame's feature scale: absolute colour then has to be rebuilt from normalised patterns, and the
demo tokenizer (~0.5M weights, 1 norm group) sat near its clips' mean-colour PSNR after 400
steps (15-16 dB held out, a green background decoded brown). `linear_output` adds a learned 1x1
projection from the un-normed features to pixels beside it, a linear path from latent to colour:
on the demo data it gave +3.6 dB held out at 400 steps and 22.1 dB against 18.8 dB at 1,500.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def _zero_(conv: nn.Conv3d) -> None:
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


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
        # Zero-initialised residual branch: the block starts as its skip and learns a correction.
        _zero_(self.conv2.conv)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def resize_channels(x: Tensor, channels: int) -> Tensor:
    """Area-resample dim 1 to `channels`: each input channel repeated, then groups averaged.

    Exact for any sizes (through their lcm): 32 -> 8 averages groups of 4, 6 -> 32 gives each
    output the mean of the input channels it overlaps. Identity when the size already matches.
    """
    c_in = x.shape[1]
    if c_in == channels:
        return x
    common = math.lcm(c_in, channels)
    x = x.repeat_interleave(common // c_in, dim=1)
    return x.unflatten(1, (channels, common // channels)).mean(dim=2)


def space_time_to_channels(x: Tensor, time_factor: int, space_factor: int = 2) -> Tensor:
    """(B, C, 1 + st*m, H, W) -> (B, C * st * ss * ss, 1 + m, H/ss, W/ss), causal in time like the
    convs. With time factor 1 it is a patchify: each pixel offset of an ss x ss cell gets its own
    channels (the identity for ss = 1)."""
    if time_factor == 1 and space_factor == 1:
        return x
    if time_factor > 1:
        x = torch.cat([x[:, :, :1].expand(-1, -1, time_factor - 1, -1, -1), x], dim=2)
    return rearrange(
        x,
        "b c (t st) (h sh) (w sw) -> b (c st sh sw) t h w",
        st=time_factor,
        sh=space_factor,
        sw=space_factor,
    )


def channels_to_space_time(x: Tensor, time_factor: int, space_factor: int = 2) -> Tensor:
    """Inverse of space_time_to_channels: depth-to-space, then drop the first frame's padded twins."""
    if time_factor == 1 and space_factor == 1:
        return x
    x = rearrange(
        x,
        "b (c st sh sw) t h w -> b c (t st) (h sh) (w sw)",
        st=time_factor,
        sh=space_factor,
        sw=space_factor,
    )
    # The first latent frame stands for one input frame, not `time_factor`.
    return x[:, :, time_factor - 1 :]


class Downsample(nn.Module):
    """Strided causal conv: 2x in space, and 2x in time (1 + 2m -> 1 + m frames) if `temporal`;
    plus, with `shortcut`, the weightless space-to-channel path."""

    def __init__(self, channels: int, temporal: bool, shortcut: bool = True):
        super().__init__()
        self.time_factor = 2 if temporal else 1
        self.shortcut = shortcut
        self.conv = CausalConv3d(channels, channels, stride=(self.time_factor, 2, 2))
        if shortcut:  # start as the weightless path (without it, a zero conv would pass nothing)
            _zero_(self.conv.conv)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if not self.shortcut:
            return h
        return h + resize_channels(space_time_to_channels(x, self.time_factor), h.shape[1])


class Upsample(nn.Module):
    """Conv to 4x (or 8x) channels, then depth-to-space; in time the first frame is dropped.
    With `shortcut`, the input's channels duplicated to that width join the conv's output."""

    def __init__(self, c_in: int, c_out: int, temporal: bool, shortcut: bool = True):
        super().__init__()
        self.time_factor = 2 if temporal else 1
        self.shortcut = shortcut
        self.conv = CausalConv3d(c_in, c_out * self.time_factor * 4)
        if shortcut:
            _zero_(self.conv.conv)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)  # (B, C * st * 4, t, h, w)
        if self.shortcut:
            h = h + resize_channels(x, h.shape[1])
        return channels_to_space_time(h, self.time_factor)


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
        shortcuts: bool = True,
        patch_size: int = 1,
    ):
        super().__init__()
        temporal = _temporal_stages(len(channels) - 1, temporal_factor)
        self.shortcuts = shortcuts
        self.patch_size = patch_size
        self.conv_in = CausalConv3d(in_channels * patch_size**2, channels[0])
        blocks: list[nn.Module] = []
        c_prev = channels[0]
        for level, c in enumerate(channels):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock3d(c_prev, c, max_groups))
                c_prev = c
            if level < len(channels) - 1:
                blocks.append(Downsample(c, temporal[level], shortcuts))
        self.blocks = nn.Sequential(*blocks)
        self.mid = nn.Sequential(
            *[ResBlock3d(c_prev, c_prev, max_groups) for _ in range(num_res_blocks)]
        )
        self.norm_out = FrameGroupNorm(c_prev, max_groups)
        self.conv_out = nn.Conv3d(c_prev, latent_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.conv_in(space_time_to_channels(x, 1, self.patch_size)))
        x = self.mid(x)
        z = self.conv_out(F.silu(self.norm_out(x)))
        return z + resize_channels(x, z.shape[1]) if self.shortcuts else z


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
        shortcuts: bool = True,
        linear_output: bool = False,
        patch_size: int = 1,
    ):
        super().__init__()
        temporal = _temporal_stages(len(channels) - 1, temporal_factor)
        self.shortcuts = shortcuts
        self.patch_size = patch_size
        out_channels = out_channels * patch_size**2
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
                blocks.append(Upsample(c_prev, channels[level - 1], temporal[level - 1], shortcuts))
                c_prev = channels[level - 1]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(c_prev, max_groups)
        self.conv_out = CausalConv3d(c_prev, out_channels)
        # Pointwise, so causal; the per-frame norm above divides out each frame's feature scale,
        # so without this path absolute colour must be rebuilt from normalised patterns.
        self.linear_out = nn.Conv3d(c_prev, out_channels, 1) if linear_output else None

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        if self.shortcuts:
            x = x + resize_channels(z, x.shape[1])
        x = self.mid(x)
        x = self.blocks(x)
        out = self.conv_out(F.silu(self.norm_out(x)))
        out = out if self.linear_out is None else out + self.linear_out(x)
        return channels_to_space_time(out, 1, self.patch_size)
