"""The work of one evaluation, cut into units that each become one published shard.

Four kinds of unit, each a batch of `evaluate.batch_size` clips:
    bits-NNN   every held-out token clip: bits/token under teacher forcing (no perturbation)
    real-NNN   held-out clips: I3D features (FVD's real set), tokenizer reconstruction PSNR/SSIM
    gen-NNN    class-conditional samples: I3D features, sampling steps and seconds
    pred-NNN   frame prediction from the clips' first latent frames: PSNR/SSIM of the predicted
               frames, of repeating the last context frame (the baseline), and I3D features
A unit's shard holds its feature rows (and kept sample videos); its record holds the scalars.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tasks.data.sharded_output import ShardRecord
from tasks.data.tar import deterministic_tar, read_samples

UnitKind = Literal["bits", "real", "gen", "pred"]
FEATURES_MEMBER = "unit.features.npy"
VIDEOS_MEMBER = "unit.videos.npy"


@dataclass(frozen=True)
class ClipRef:
    """One held-out clip: the dataset shard that holds its mp4, and its key there."""

    shard_uri: str
    key: str


@dataclass
class EvalUnit:
    """One batch of work; `clips` for real and pred units, `labels` for gen and pred units."""

    name: str
    kind: UnitKind
    clips: list[ClipRef] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    seed: int = 0
    keep_videos: int = 0  # gen units: how many of its samples to keep as videos
    context: list[np.ndarray] | None = None  # pred: per-scale (n, Tc, h_k, w_k) ids; bits: all


@dataclass
class UnitResult:
    """What a worker returns for one unit."""

    name: str
    features: np.ndarray  # (n, 400) I3D logits
    values: dict[str, list[float]]  # per-video scalars, e.g. psnr, ssim
    seconds: float  # sampling (gen, pred) or reconstruction (real) wall time
    steps: int = 0  # sampler forwards per batch
    videos: np.ndarray | None = None  # (k, T, H, W, 3) uint8 kept samples


class UnitRecord(ShardRecord):
    """The completion record of a unit: its scalars, so aggregation reads features alone."""

    format: int = 1
    kind: UnitKind = "real"
    count: int = 0
    values: dict[str, list[float]] = {}
    seconds: float = 0.0
    steps: int = 0


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def unit_shard(result: UnitResult) -> bytes:
    """The shard bytes of a finished unit (feature rows, then any kept videos)."""
    members = [(FEATURES_MEMBER, _npy(result.features.astype(np.float32)))]
    if result.videos is not None and len(result.videos):
        members.append((VIDEOS_MEMBER, _npy(result.videos)))
    return deterministic_tar(members)


def read_unit_shard(uri: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, videos or None) of a published unit shard."""
    members: dict[str, bytes] = {}
    for key, sample in read_samples(uri):
        for extension, data in sample.items():
            members[f"{key}.{extension}"] = data
    features = np.load(io.BytesIO(members[FEATURES_MEMBER]), allow_pickle=False)
    videos = members.get(VIDEOS_MEMBER)
    return features, np.load(io.BytesIO(videos), allow_pickle=False) if videos else None


def batches(items: list, size: int) -> list[list]:
    """`items` in consecutive batches of at most `size`."""
    return [items[i : i + size] for i in range(0, len(items), size)]
