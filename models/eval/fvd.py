"""Fréchet Video Distance: I3D input preparation, a range check, feature statistics, the distance.

FVD = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) between Gaussians fitted to the I3D
logits of two video sets. The numbers only compare under one protocol (I3D variant, 16 frames,
224x224, resize method, set sizes, how the real set is drawn); tasks.evaluate.config.FVDProtocol
records it.

Input range rule (`check_i3d_range`): I3D wants [-1, 1]. A batch is refused when any value lies
outside [-1, 1] (beyond a 1e-3 resampling tolerance) -- [0, 255] data, or [-1, 1] data mapped
again with 2x - 1 -- and when no value is negative: a correctly mapped video batch goes below 0
wherever a pixel is darker than mid-grey, so an all-non-negative batch is far more likely [0, 1]
data that skipped the mapping (or [-1, 1] data "un-mapped" twice) than real footage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.eval.resize import ResizeMethod

RANGE_TOLERANCE = 1e-3


class InputRangeError(ValueError):
    """Video values that are not in the [-1, 1] range I3D expects."""


def to_i3d_input(
    frames: np.ndarray | Tensor,
    num_frames: int = 16,
    side: int = 224,
    resize: ResizeMethod = "bilinear",
    start: int = 0,
) -> Tensor:
    """uint8 videos (N, T, H, W, 3) -> float32 (N, 3, num_frames, side, side) in [-1, 1]."""
    video = torch.as_tensor(frames)
    if video.dtype != torch.uint8 or video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(
            f"videos of dtype {video.dtype} and shape {tuple(video.shape)}: expected uint8 "
            "(N, T, H, W, 3) frames as decoded (tasks.data.video.decode_clip, stacked)"
        )
    if video.shape[1] < start + num_frames:
        raise ValueError(
            f"videos have {video.shape[1]} frames; frames {start}..{start + num_frames - 1} "
            f"are needed (FVD uses {num_frames} frames per video)"
        )
    n, t = video.shape[0], num_frames
    x = video[:, start : start + t].permute(0, 1, 4, 2, 3).reshape(n * t, 3, *video.shape[2:4])
    x = x.float() / 127.5 - 1.0
    if tuple(x.shape[-2:]) != (side, side):
        if resize == "area":
            x = F.interpolate(x, size=(side, side), mode="area")
        else:
            # antialias matters only when shrinking; clamp: bicubic overshoots the range.
            x = F.interpolate(
                x, size=(side, side), mode=resize, align_corners=False, antialias=True
            ).clamp_(-1.0, 1.0)
    return x.reshape(n, t, 3, side, side).permute(0, 2, 1, 3, 4).contiguous()


def check_i3d_range(video: Tensor, name: str = "video batch") -> None:
    """Refuse a batch that is not float data in [-1, 1] with some negative values (module doc)."""
    if not video.is_floating_point():
        raise InputRangeError(
            f"{name}: dtype {video.dtype}; I3D takes float video in [-1, 1] "
            "(uint8 frames: models.eval.fvd.to_i3d_input maps x / 127.5 - 1)"
        )
    if not bool(torch.isfinite(video).all()):
        raise InputRangeError(f"{name}: contains NaN or inf")
    low, high = float(video.min()), float(video.max())
    if low < -1.0 - RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise InputRangeError(
            f"{name}: values in [{low:.4g}, {high:.4g}], I3D expects [-1, 1]. [0, 255] input "
            "needs x / 127.5 - 1; input already in [-1, 1] must not be mapped again with 2x - 1"
        )
    if low >= 0.0:
        raise InputRangeError(
            f"{name}: every value is in [0, {high:.4g}], no negative value at all: this looks "
            "like [0, 1] data that was never mapped to [-1, 1] (2x - 1), or was mapped back. "
            "A correctly mapped batch of real videos goes below 0 wherever a pixel is darker "
            "than mid-grey"
        )


@torch.inference_mode()
def i3d_logits(model: nn.Module, video: Tensor, name: str = "video batch") -> Tensor:
    """I3D logits (N, 400) in float32 of a checked batch (N, 3, T, 224, 224) in [-1, 1]."""
    check_i3d_range(video, name)
    param = next(model.parameters())
    return model(video.to(device=param.device, dtype=param.dtype)).float()


@dataclass
class FeatureStats:
    """Running mean and scatter matrix of feature rows, in float64, mergeable across batches."""

    dim: int
    count: int = 0
    mean: np.ndarray = field(init=False)
    scatter: np.ndarray = field(init=False)  # sum of outer products of deviations from the mean

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.dim, dtype=np.float64)
        self.scatter = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, features: np.ndarray | Tensor) -> FeatureStats:
        """Add a batch of rows (B, dim); returns self."""
        rows = _as_float64(features)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"features of shape {rows.shape}: expected (batch, {self.dim})")
        if not np.isfinite(rows).all():
            raise ValueError("features contain NaN or inf")
        batch = FeatureStats(self.dim)
        batch.count = rows.shape[0]
        if batch.count:
            batch.mean = rows.mean(axis=0)
            centred = rows - batch.mean
            batch.scatter = centred.T @ centred
        return self.merge(batch)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another set's statistics into these (Chan et al.'s parallel update); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge feature stats of dim {other.dim} into dim {self.dim}")
        total = self.count + other.count
        if other.count == 0:
            return self
        delta = other.mean - self.mean
        self.scatter = (
            self.scatter
            + other.scatter
            + np.outer(delta, delta) * (self.count * other.count / total)
        )
        self.mean = self.mean + delta * (other.count / total)
        self.count = total
        return self

    def covariance(self) -> np.ndarray:
        """Unbiased covariance (divides by count - 1, like numpy.cov)."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 feature rows, have {self.count}")
        return self.scatter / (self.count - 1)


def _as_float64(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; tiny negative eigenvalues -> 0."""
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray
) -> float:
    """Fréchet distance between N(mean1, cov1) and N(mean2, cov2), in float64."""
    m1, m2 = _as_float64(mean1), _as_float64(mean2)
    s1, s2 = _as_float64(cov1), _as_float64(cov2)
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes mean {m1.shape}, {m2.shape} and covariance {s1.shape}, {s2.shape} "
            f"do not describe two Gaussians of one dimension"
        )
    # tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2): the symmetric form stays real and PSD, so eigh
    # applies, where a general sqrtm of S1 S2 can return complex noise for singular covariances.
    root1 = psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = m1 - m2
    distance = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    # Rounding can leave a distance of identical sets a hair below zero.
    return max(distance, 0.0)


def fvd_from_stats(real: FeatureStats, generated: FeatureStats) -> float:
    """FVD between two accumulated I3D feature sets."""
    return frechet_distance(real.mean, real.covariance(), generated.mean, generated.covariance())
