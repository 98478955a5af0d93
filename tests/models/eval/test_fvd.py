"""FVD math: Fréchet distance against closed forms, batch-wise statistics, the input range rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.eval.fvd import (
    FeatureStats,
    InputRangeError,
    check_i3d_range,
    frechet_distance,
    i3d_logits,
    psd_sqrt,
    to_i3d_input,
)


def _rotation(dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form() -> None:
    rng = np.random.default_rng(0)
    m1, m2 = rng.standard_normal(50), rng.standard_normal(50)
    a, b = rng.uniform(0.1, 5.0, 50), rng.uniform(0.1, 5.0, 50)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_covariances_sharing_eigenvectors_matches_closed_form() -> None:
    rng = np.random.default_rng(1)
    r = _rotation(40, 2)
    a, b = rng.uniform(0.01, 3.0, 40), rng.uniform(0.01, 3.0, 40)
    s1, s2 = r @ np.diag(a) @ r.T, r @ np.diag(b) @ r.T
    m1, m2 = rng.standard_normal(40), rng.standard_normal(40)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_non_commuting_2x2_covariances_matches_direct_formula() -> None:
    # For 2x2 PSD A: tr(sqrt(A)) = sqrt(tr A + 2 sqrt(det A)), and S1^1/2 S2 S1^1/2 has the trace
    # of S1 S2 and the determinant det S1 det S2.
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m1, m2 = np.array([0.3, -1.0]), np.array([1.5, 0.2])
    trace_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_is_zero_for_identical_and_finite_for_singular_covariances() -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((5, 400)) * 3 + 1  # 5 rows in 400 dims: rank-4 covariance
    stats = FeatureStats(400).update(rows)
    cov = stats.covariance()
    assert frechet_distance(stats.mean, cov, stats.mean, cov) == pytest.approx(0.0, abs=1e-6)
    other = FeatureStats(400).update(rng.standard_normal((5, 400)) * 3 + 1)
    distance = frechet_distance(stats.mean, cov, other.mean, other.covariance())
    assert np.isfinite(distance) and distance > 0


def test_psd_sqrt_squares_back_and_ignores_tiny_negative_eigenvalues() -> None:
    r = _rotation(6, 4)
    matrix = r @ np.diag([4.0, 1.0, 0.25, 0.0, 0.0, -1e-14]) @ r.T
    root = psd_sqrt(matrix)
    assert np.isfinite(root).all()
    np.testing.assert_allclose(root @ root, matrix, atol=1e-12)


def test_feature_stats_accumulated_in_batches_equal_numpy_on_all_rows() -> None:
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((37, 12)) * 10 + 100  # a large mean tests the stable update
    stats = FeatureStats(12)
    for start in range(0, 37, 5):
        stats.update(torch.from_numpy(rows[start : start + 5]).float())
    rows32 = rows.astype(np.float32).astype(np.float64)
    assert stats.count == 37
    np.testing.assert_allclose(stats.mean, rows32.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(rows32, rowvar=False), rtol=1e-9)
    halves = FeatureStats(12).update(rows32[:20]).merge(FeatureStats(12).update(rows32[20:]))
    np.testing.assert_allclose(halves.covariance(), stats.covariance(), rtol=1e-9)


def test_feature_stats_refuse_wrong_width_and_too_few_rows() -> None:
    with pytest.raises(ValueError, match=r"expected \(batch, 400\)"):
        FeatureStats(400).update(np.zeros((2, 399)))
    with pytest.raises(ValueError, match="at least 2 feature rows"):
        FeatureStats(3).update(np.zeros((1, 3))).covariance()


def test_to_i3d_input_maps_uint8_to_minus_one_one_at_224() -> None:
    frames = np.zeros((2, 21, 64, 48, 3), dtype=np.uint8)
    frames[:, :, :, 24:] = 255
    frames[:, 5] = 128
    video = to_i3d_input(frames, start=5)
    assert video.shape == (2, 3, 16, 224, 224) and video.dtype == torch.float32
    assert float(video[:, :, 0].min()) == pytest.approx(128 / 127.5 - 1, abs=1e-6)  # frame 5 first
    assert float(video[:, :, 1:].min()) == -1.0 and float(video[:, :, 1:].max()) == 1.0
    check_i3d_range(video)
    with pytest.raises(ValueError, match=r"videos have 21 frames; frames 6\.\.21 are needed"):
        to_i3d_input(frames, start=6)
    with pytest.raises(ValueError, match="expected uint8"):
        to_i3d_input(frames.astype(np.float32))


def test_range_check_refuses_unmapped_and_double_mapped_input() -> None:
    frames = np.random.default_rng(6).integers(0, 256, (1, 16, 32, 32, 3), dtype=np.uint8)
    video = to_i3d_input(frames)
    check_i3d_range(video)  # correctly mapped: accepted
    with pytest.raises(InputRangeError, match=r"\[0, 255\] input needs x / 127.5 - 1"):
        check_i3d_range((video + 1) * 127.5)
    with pytest.raises(InputRangeError, match="must not be mapped again with 2x - 1"):
        check_i3d_range(video * 2 - 1)  # [-1, 1] rescaled a second time: [-3, 1]
    with pytest.raises(InputRangeError, match="looks like \\[0, 1\\] data"):
        check_i3d_range((video + 1) / 2)  # [0, 1] that never got mapped
    with pytest.raises(InputRangeError, match="I3D takes float video"):
        check_i3d_range(torch.from_numpy(frames))
    with pytest.raises(InputRangeError, match="NaN"):
        check_i3d_range(torch.full((1, 3, 16, 8, 8), float("nan")))


def test_i3d_logits_refuses_before_running_the_model() -> None:
    class CountsCalls(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return x.flatten(1)[:, :400]

    model = CountsCalls()
    with pytest.raises(InputRangeError, match="real clips 1..2"):
        i3d_logits(model, torch.rand(2, 3, 16, 8, 8), "real clips 1..2")
    assert model.calls == 0
    assert i3d_logits(model, torch.rand(2, 3, 16, 8, 8) * 2 - 1).shape == (2, 400)
