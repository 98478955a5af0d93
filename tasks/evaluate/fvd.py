"""FVD under a stated protocol: draw the real set, extract I3D features in batches, compare."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.eval.fvd import FeatureStats, fvd_from_stats, i3d_logits, to_i3d_input
from models.eval.i3d import NUM_CLASSES
from tasks.evaluate.config import STANDARD_VIDEO_COUNT, FVDProtocol

log = logging.getLogger("arvid.evaluate")


@dataclass(frozen=True)
class FVDResult:
    """One FVD value with the protocol it was computed under."""

    fvd: float
    protocol: FVDProtocol


def draw_real_indices(available: int, protocol: FVDProtocol) -> list[int]:
    """Indices of the real clips the protocol selects out of `available` clips of its split."""
    if available < protocol.real_videos:
        raise ValueError(
            f"the {protocol.real_split!r} split has {available} clips, the FVD protocol needs "
            f"{protocol.real_videos} real videos (lower fvd real_videos, or use a larger split)"
        )
    if protocol.real_draw == "first":
        return list(range(protocol.real_videos))
    rng = np.random.default_rng(protocol.real_seed)
    return sorted(rng.choice(available, size=protocol.real_videos, replace=False).tolist())


def video_features(
    model: nn.Module,
    videos: Iterable[np.ndarray],
    protocol: FVDProtocol,
    batch_size: int = 4,
    name: str = "videos",
) -> FeatureStats:
    """I3D logit statistics of uint8 videos (each (T, H, W, 3)), prepared as the protocol says."""
    stats = FeatureStats(NUM_CLASSES)
    batch: list[torch.Tensor] = []

    def flush() -> None:
        first = stats.count + 1
        video = torch.cat(batch)
        stats.update(i3d_logits(model, video, f"{name} {first}..{first + len(batch) - 1}"))
        batch.clear()

    for frames in videos:
        batch.append(
            to_i3d_input(
                np.asarray(frames)[None],
                num_frames=protocol.frames,
                side=protocol.resolution,
                resize=protocol.resize,
                start=protocol.start_frame,
            )
        )
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return stats


def compute_fvd(real: FeatureStats, generated: FeatureStats, protocol: FVDProtocol) -> FVDResult:
    """FVD between feature sets whose sizes must be the ones the protocol states."""
    if (real.count, generated.count) != (protocol.real_videos, protocol.generated_videos):
        raise ValueError(
            f"FVD protocol states {protocol.real_videos} real and {protocol.generated_videos} "
            f"generated videos, features hold {real.count} and {generated.count}"
        )
    value = fvd_from_stats(real, generated)
    if not protocol.is_standard_size:
        log.warning(
            "FVD %.2f from %d real and %d generated videos, not the standard %d each: "
            "compare it only with FVDs under the same protocol",
            value,
            real.count,
            generated.count,
            STANDARD_VIDEO_COUNT,
        )
    return FVDResult(fvd=value, protocol=protocol)
