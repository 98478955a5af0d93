"""The FVD protocol: its defaults are the standard, the real draw is seeded, counts are enforced."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pydantic import ValidationError

from models.eval.fvd import FeatureStats
from tasks.evaluate.config import FVDProtocol
from tasks.evaluate.fvd import compute_fvd, draw_real_indices


def test_default_protocol_is_the_standard_one_and_logs_flat() -> None:
    protocol = FVDProtocol()
    assert (protocol.real_videos, protocol.generated_videos) == (2048, 2048)
    assert (protocol.frames, protocol.resolution) == (16, 224)
    assert protocol.is_standard_size
    params = protocol.as_params()
    assert params["fvd_protocol.real_videos"] == 2048
    assert params["fvd_protocol.resize"] == "bilinear"
    assert params["fvd_protocol.standard_size"] == "true"
    assert not FVDProtocol(real_videos=64, generated_videos=64).is_standard_size


def test_protocol_refuses_other_frame_counts_and_resolutions() -> None:
    with pytest.raises(ValidationError, match="frames"):
        FVDProtocol(frames=17)
    with pytest.raises(ValidationError, match="resolution"):
        FVDProtocol(resolution=128)


def test_real_draw_is_reproducible_from_its_seed() -> None:
    protocol = FVDProtocol(real_videos=10, real_seed=3)
    drawn = draw_real_indices(100, protocol)
    assert drawn == draw_real_indices(100, protocol)
    assert len(set(drawn)) == 10 and all(0 <= i < 100 for i in drawn)
    assert drawn != draw_real_indices(100, protocol.model_copy(update={"real_seed": 4}))
    first = protocol.model_copy(update={"real_draw": "first"})
    assert draw_real_indices(100, first) == list(range(10))
    with pytest.raises(ValueError, match="split has 5 clips, the FVD protocol needs 10"):
        draw_real_indices(5, protocol)


def test_fvd_refuses_feature_counts_other_than_the_protocol_and_warns_on_small_sets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(0)
    real = FeatureStats(400).update(rng.standard_normal((4, 400)))
    generated = FeatureStats(400).update(rng.standard_normal((4, 400)) + 1)
    with pytest.raises(ValueError, match="states 2048 real and 2048 generated videos"):
        compute_fvd(real, generated, FVDProtocol())
    protocol = FVDProtocol(real_videos=4, generated_videos=4)
    with caplog.at_level(logging.WARNING, logger="arvid.evaluate"):
        result = compute_fvd(real, generated, protocol)
    assert result.fvd > 0 and result.protocol == protocol
    assert "not the standard 2048 each" in caplog.text
