"""FVD with the real Kinetics-400 I3D on real (synthetic, mp4-encoded, decoded) clips.

Eight clips, 16 frames each: I3D at 224x224 costs ~1-1.5 s of CPU per clip, so the file runs
18 clip forwards in all. Sets of 4 clips give large FVDs (a 400-dim covariance from 4 rows), but
the ordering is what these tests pin: measured halves ~1,160, noise 0.05 ~2,400, noise 0.5 ~7,600.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.eval.fvd import i3d_logits, to_i3d_input
from tasks.evaluate.config import FVDProtocol
from tasks.evaluate.fvd import compute_fvd, video_features


def _noisy(clip: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """Gaussian pixel noise with standard deviation `strength` of the full [0, 255] range."""
    rng = np.random.default_rng(seed)
    return np.clip(clip + rng.normal(0.0, strength * 255.0, clip.shape), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_pretrained_i3d_gives_400_logits_deterministically(i3d_model, synthetic_clips) -> None:
    video = to_i3d_input(np.stack(synthetic_clips[:1]))
    first = i3d_logits(i3d_model, video)
    second = i3d_logits(i3d_model, video)
    assert first.shape == (1, 400)
    assert torch.equal(first, second)
    # Kinetics logits of a real network are spread out, not the flat output of zeroed weights.
    assert float(first.std()) > 1.0


@pytest.mark.slow
def test_fvd_of_disjoint_halves_is_far_below_corrupted_copies_and_grows_with_noise(
    i3d_model, synthetic_clips
) -> None:
    half_a, half_b = synthetic_clips[0::2], synthetic_clips[1::2]
    protocol = FVDProtocol(real_videos=4, generated_videos=4, real_draw="first")
    real = video_features(i3d_model, half_a, protocol, name="half A")
    scores = []
    for strength in (0.0, 0.05, 0.5):
        copies = [_noisy(c, strength, seed=i) for i, c in enumerate(half_b)] if strength else half_b
        generated = video_features(i3d_model, copies, protocol, name=f"half B, noise {strength}")
        scores.append(compute_fvd(real, generated, protocol).fvd)
    halves, light, heavy = scores
    assert halves < light < heavy, scores
    assert heavy > 3 * halves, scores
