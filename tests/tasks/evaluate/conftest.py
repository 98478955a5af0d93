"""Evaluation fixtures: the real I3D (weights fetched once into the cache) and real synthetic clips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tasks.config import REPO_ROOT


@pytest.fixture(scope="session")
def i3d_model():
    """Kinetics-400 I3D with the real weights; the first session on a machine fetches them (~1 min)."""
    from tasks.evaluate.config import I3DWeightsConfig
    from tasks.evaluate.i3d_weights import CACHE_ENV, DEFAULT_CACHE_DIR, load_i3d

    cache = os.environ.get(CACHE_ENV) or str(REPO_ROOT / DEFAULT_CACHE_DIR)
    return load_i3d(I3DWeightsConfig(cache_dir=cache))


@pytest.fixture(scope="session")
def synthetic_clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Eight decoded 16-frame clips (64x64) from arvid's synthetic dataset maker, one per class."""
    from tasks.data.video import decode_clip
    from tasks.ingest.config import SyntheticDatasetConfig
    from tasks.ingest.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("fvd-clips")
    config = SyntheticDatasetConfig(count=8, frames=16, seed=11, preset="ultrafast")
    made = make_synthetic_dataset(config, out)
    return [decode_clip(Path(p).read_bytes()) for p in made.paths]
