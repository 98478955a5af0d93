"""mp4 encoding: the same frames give the same bytes, in one process and across processes."""

from __future__ import annotations

import hashlib
import multiprocessing

import numpy as np
import pytest

from tasks.data.video import decode_clip, write_frames_mp4
from tasks.ingest.config import SyntheticDatasetConfig
from tasks.ingest.synthetic import render_video

# The sizes of tests/tasks/test_synthetic.py, where a changing digest was first seen.
_CONFIG = SyntheticDatasetConfig(width=48, height=32, fps=10, frames=17, seed=7)
_VIDEOS = (0, 3, 6)


def _digests(videos: tuple[int, ...], preset: str, repeats: int) -> dict[int, set[str]]:
    """sha256 of `repeats` encodes of each rendered video (run in this or a spawned process)."""
    found: dict[int, set[str]] = {}
    for index in videos:
        frames = render_video(_CONFIG, index).frames
        found[index] = {
            hashlib.sha256(write_frames_mp4(frames, fps=_CONFIG.fps, preset=preset)).hexdigest()
            for _ in range(repeats)
        }
    return found


# "medium" is what the synthetic dataset uses (x264 lookahead and MB-tree), "ultrafast" what
# ingestion re-encodes clips with.
@pytest.mark.parametrize("preset", ["medium", "ultrafast"])
def test_same_frames_encode_to_one_digest_in_and_across_processes(preset: str) -> None:
    here = _digests(_VIDEOS, preset, repeats=20)
    # Fresh interpreters: another heap, stack and library state than this test process has.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        there = pool.starmap(_digests, [(_VIDEOS, preset, 10)] * 4)
    for index in _VIDEOS:
        digests = here[index].union(*(found[index] for found in there))
        assert len(digests) == 1, (index, sorted(digests))
    # Different videos are different files: the digest is not constant by accident.
    assert len({next(iter(here[i])) for i in _VIDEOS}) == len(_VIDEOS)


def test_encoded_clip_decodes_to_the_frames_within_a_few_levels() -> None:
    frames = render_video(_CONFIG, 0).frames
    decoded = decode_clip(write_frames_mp4(frames, fps=_CONFIG.fps, crf=18))
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 4


def test_x264_encodes_with_mb_tree_off_and_one_thread() -> None:
    # x264 writes its settings into the stream: MB-tree reads uninitialised memory in the
    # libx264 PyAV bundles (see tasks/data/video.py), frame threads make bytes timing-dependent.
    data = write_frames_mp4(render_video(_CONFIG, 0).frames, fps=_CONFIG.fps)
    settings = data[data.index(b"options: ") :].split(b"\x00")[0].decode().split()
    assert {"mbtree=0", "threads=1", "lookahead_threads=1", "sliced_threads=0"} <= set(settings)
