"""Synthetic demo dataset maker and the bad-input makers the ingestion tests rely on."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from tasks.data.video import write_frames_mp4
from tasks.ingest.config import DEFAULT_CLASSES, MOTION_CLASSES, SHAPES, SyntheticDatasetConfig
from tasks.ingest.synthetic import MANIFEST_NAME, make_synthetic_dataset, render_video
from tests.support import bad_inputs


def _decode(path: Path | bytes) -> tuple[np.ndarray, Fraction]:
    """All frames of the first video stream as (T,H,W,3) uint8, and the stream's frame rate."""
    source = str(path) if isinstance(path, Path) else io.BytesIO(path)
    with av.open(source) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), stream.average_rate


def _foreground_centroids(frames: np.ndarray) -> np.ndarray:
    """Per-frame (x, y) centroid of what is not background, (T, 2), from decoded pixels alone."""
    # The background is a linear gradient, so an affine fit of colour against (x, y), refitted
    # without the pixels it explains badly, recovers it and leaves the object as the outliers.
    t, h, w, _ = frames.shape
    ys, xs = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), xs.ravel(), ys.ravel()], axis=1)
    centroids = np.zeros((t, 2))
    for i, frame in enumerate(frames.reshape(t, h * w, 3).astype(np.float64)):
        keep = np.ones(h * w, dtype=bool)
        for _ in range(3):
            coef, *_ = np.linalg.lstsq(design[keep], frame[keep], rcond=None)
            residual = np.abs(frame - design @ coef).sum(axis=1)
            keep = residual < 45
        mask = ~keep
        assert mask.any(), "object invisible in a frame"
        centroids[i] = xs.ravel()[mask].mean(), ys.ravel()[mask].mean()
    return centroids


@pytest.fixture(scope="module")
def small_config() -> SyntheticDatasetConfig:
    return SyntheticDatasetConfig(count=10, width=48, height=32, fps=10, frames=17, seed=7)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, small_config):
    out = tmp_path_factory.mktemp("synthetic")
    progress: list[tuple[int, int]] = []
    result = make_synthetic_dataset(
        small_config, out, on_progress=lambda d, t: progress.append((d, t))
    )
    return out, result, progress


def test_same_config_writes_byte_identical_mp4s(tmp_path, small_config, small_dataset):
    first_dir, first, _ = small_dataset
    second = make_synthetic_dataset(small_config, tmp_path)
    for a, b in zip(first.paths, second.paths, strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), a.name
    assert (first_dir / MANIFEST_NAME).read_bytes() == (tmp_path / MANIFEST_NAME).read_bytes()


def test_different_seed_changes_the_videos(tmp_path, small_config, small_dataset):
    _, first, _ = small_dataset
    other = make_synthetic_dataset(
        small_config.model_copy(update={"count": 2, "seed": 8}), tmp_path
    )
    assert first.paths[0].read_bytes() != other.paths[0].read_bytes()


def test_count_size_fps_and_frames_are_respected(small_config, small_dataset):
    out, result, progress = small_dataset
    assert len(result.videos) == small_config.count
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(p.name for p in result.paths)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert progress == [(i, small_config.count) for i in range(1, small_config.count + 1)]
    for path in result.paths:
        frames, rate = _decode(path)
        assert frames.shape == (small_config.frames, small_config.height, small_config.width, 3)
        assert rate == small_config.fps


@pytest.mark.parametrize("fps,frames", [(Fraction(30000, 1001), 5), (25, 1)])
def test_odd_fps_and_single_frame_videos_decode_as_written(tmp_path, fps, frames):
    config = SyntheticDatasetConfig(count=1, width=16, height=10, fps=fps, frames=frames)
    result = make_synthetic_dataset(config, tmp_path)
    decoded, rate = _decode(result.paths[0])
    assert decoded.shape == (frames, 10, 16, 3)
    assert rate == Fraction(fps)


def test_labels_jsonl_rows_match_the_files(small_config, small_dataset):
    out, result, _ = small_dataset
    rows = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert len(rows) == small_config.count
    for index, (row, video) in enumerate(zip(rows, result.videos, strict=True)):
        assert set(row) == {"path", "label", "label_id", "caption"}
        assert (out / row["path"]).is_file()
        assert row["path"] == f"{index:05d}_{row['label']}.mp4" == video.path.name
        assert row["label"] == small_config.classes[row["label_id"]] == video.label
        assert row["caption"] == video.caption and row["caption"]
    assert {r["label"] for r in rows} == set(DEFAULT_CLASSES)
    # Ingestion shards inputs sorted by name: every run of len(classes) names holds every class,
    # so a held-out shard is no set of classes the training shards never saw.
    names = sorted(row["path"] for row in rows)
    first = names[: len(small_config.classes)]
    assert {name.split("_", 1)[1].removesuffix(".mp4") for name in first} == set(DEFAULT_CLASSES)


def test_translation_classes_move_the_object_the_named_way(tmp_path):
    config = SyntheticDatasetConfig(
        count=16, width=64, height=48, frames=17, classes=["left", "right", "up", "down"], seed=3
    )
    result = make_synthetic_dataset(config, tmp_path)
    for video in result.videos:
        centroids = _foreground_centroids(_decode(video.path)[0])
        dx, dy = centroids[-1] - centroids[0]
        expected = {"left": (dx < -8), "right": (dx > 8), "up": (dy < -6), "down": (dy > 6)}
        assert expected[video.label], (video.path.name, dx, dy)
        across = abs(dy) if video.label in ("left", "right") else abs(dx)
        assert across < 2, (video.path.name, dx, dy)


def test_zoom_orbit_and_rotate_classes_move_as_named():
    config = SyntheticDatasetConfig(
        count=12,
        width=64,
        height=64,
        frames=17,
        classes=["zoom_in", "zoom_out", "orbit", "rotate"],
        # Shapes whose pixel centroid is their centre, so turning in place keeps it still.
        shapes=["square", "triangle"],
    )
    for index in range(config.count):
        video = render_video(config, index)
        area = video.masks.sum(axis=(1, 2))
        if video.label == "zoom_in":
            assert area[-1] > 3 * area[0] and (np.diff(area) >= -2).all()
        elif video.label == "zoom_out":
            assert area[0] > 3 * area[-1] and (np.diff(area) <= 2).all()
        else:
            ys, xs = np.nonzero(video.masks[0])
            ye, xe = np.nonzero(video.masks[-1])
            shift = np.hypot(xe.mean() - xs.mean(), ye.mean() - ys.mean())
            if video.label == "orbit":
                # Orbiting around the centre keeps a steady distance from it while moving.
                dist = [np.hypot(*(np.argwhere(m).mean(axis=0) - 32 + 0.5)) for m in video.masks]
                assert shift > 5 and np.ptp(dist) < 4, (index, shift, np.ptp(dist))
            else:
                # Turning in place: the centre stays, the covered pixels change (compare with
                # every frame: a square turned a quarter turn looks as it started).
                overlap = min(
                    (video.masks[0] & m).sum() / video.masks[0].sum() for m in video.masks
                )
                assert shift < 3 and overlap < 0.9, (index, shift, overlap)


_CAPTION_VERBS = {
    "left": "moves left",
    "right": "moves right",
    "up": "moves up",
    "down": "moves down",
    "rotate": "rotates",
    "orbit": "orbits",
    "bounce": "bounces",
    "zoom_in": "grows",
    "zoom_out": "shrinks",
}


def test_every_motion_class_renders_a_visible_object():
    config = SyntheticDatasetConfig(
        count=len(MOTION_CLASSES) * 2, width=32, height=32, frames=9, classes=list(MOTION_CLASSES)
    )
    for index in range(config.count):
        video = render_video(config, index)
        assert (video.masks.sum(axis=(1, 2)) > 0).all(), video.label
        # The caption names the object's kind and says how it moves.
        assert any(shape in video.caption for shape in SHAPES), video.caption
        assert _CAPTION_VERBS[video.label] in video.caption, video.caption


def test_adding_videos_keeps_earlier_ones_identical(tmp_path, small_config, small_dataset):
    _, first, _ = small_dataset
    grown = make_synthetic_dataset(small_config.model_copy(update={"count": 12}), tmp_path)
    assert len(grown.videos) == 12
    for old, new in zip(first.videos, grown.videos[:10], strict=False):
        assert old.path.read_bytes() == new.path.read_bytes()
        assert (old.label, old.caption) == (new.label, new.caption)


@pytest.mark.parametrize("field", ["width", "height"])
def test_odd_frame_size_is_rejected_naming_the_value(field):
    with pytest.raises(ValidationError, match=f"{field}=33 is odd"):
        SyntheticDatasetConfig(**{field: 33})
    with pytest.raises(ValueError, match="=33 is odd"):
        shape = (2, 33, 32, 3) if field == "height" else (2, 32, 33, 3)
        write_frames_mp4(np.zeros(shape, np.uint8), fps=8)


def test_unknown_class_is_rejected():
    with pytest.raises(ValidationError, match="unknown motion classes"):
        SyntheticDatasetConfig(classes=["left", "sideways"])


def test_write_frames_mp4_returns_bytes_or_writes_a_path(tmp_path):
    frames = render_video(SyntheticDatasetConfig(frames=6, width=32, height=32), 0).frames
    data = write_frames_mp4(frames, fps=8, preset="ultrafast")
    path = write_frames_mp4(frames, tmp_path / "clip.mp4", fps=8, preset="ultrafast")
    assert path.read_bytes() == data
    decoded, _ = _decode(data)
    assert decoded.shape == frames.shape
    # Lossy, but close: a clip round-trips within a few grey levels on average.
    assert np.abs(decoded.astype(int) - frames).mean() < 6
    fast = write_frames_mp4(frames, fps=8, preset="ultrafast", faststart=True)
    assert fast.index(b"moov") < fast.index(b"mdat")
    assert data.index(b"mdat") < data.index(b"moov")


# --- bad inputs --------------------------------------------------------------------------


def _opens(path: Path) -> bool:
    try:
        with av.open(str(path)):
            return True
    except av.error.FFmpegError:
        return False


def test_zero_byte_and_text_files_are_not_videos(tmp_path):
    zero = bad_inputs.write_zero_byte_mp4(tmp_path)
    text = bad_inputs.write_text_as_mp4(tmp_path)
    assert zero.suffix == text.suffix == ".mp4"
    assert zero.stat().st_size == 0
    assert text.read_text().startswith("this is not a video")
    assert not _opens(zero) and not _opens(text)


def test_truncated_mp4_lost_its_moov_and_cannot_open(tmp_path):
    path = bad_inputs.write_truncated_mp4(tmp_path)
    whole = bad_inputs.write_good_video(tmp_path, "whole.mp4", seconds=3.0, seed=4)
    assert 0.55 < path.stat().st_size / whole.stat().st_size < 0.65
    assert path.read_bytes() == whole.read_bytes()[: path.stat().st_size]
    assert not _opens(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truncated_faststart_mp4_opens_but_decodes_fewer_frames_than_claimed(tmp_path):
    path = bad_inputs.write_truncated_faststart_mp4(tmp_path)
    whole = bad_inputs.write_good_video(tmp_path, "whole.mp4", seconds=3.0, seed=4, faststart=True)
    assert path.stat().st_size < whole.stat().st_size
    decoded = 0
    with av.open(str(path)) as container:
        claimed = container.streams.video[0].frames
        try:
            for _ in container.decode(video=0):
                decoded += 1
        except av.error.FFmpegError:
            pass
    assert claimed == 24 and decoded < claimed


def test_audio_only_mp4_has_no_video_stream(tmp_path):
    path = bad_inputs.write_audio_only_mp4(tmp_path)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 0
        assert len(container.streams.audio) == 1
        assert container.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in container.decode(audio=0)) > 0


def test_one_frame_short_and_oversized_videos_are_what_they_claim(tmp_path):
    one, _ = _decode(bad_inputs.write_one_frame_video(tmp_path))
    assert one.shape[0] == 1
    short_path = bad_inputs.write_short_video(tmp_path)
    with av.open(str(short_path)) as container:
        stream = container.streams.video[0]
        seconds = sum(1 for _ in container.decode(stream)) / stream.average_rate
    assert 0.25 <= seconds <= 0.35
    big, _ = _decode(bad_inputs.write_oversized_video(tmp_path))
    assert big.shape[1:3] == (720, 1280)


def test_good_video_has_the_requested_duration_size_and_rate(tmp_path):
    path = bad_inputs.write_good_video(tmp_path, "good.mp4", seconds=2.5, fps=12, size=(40, 24))
    frames, rate = _decode(path)
    assert frames.shape == (30, 24, 40, 3) and rate == 12


def test_write_all_bad_inputs_writes_one_file_per_kind(tmp_path):
    written = bad_inputs.write_all_bad_inputs(tmp_path)
    assert set(written) == set(bad_inputs.BAD_INPUT_MAKERS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())


def test_a_folder_made_by_the_same_config_is_kept_and_a_changed_one_is_rewritten(
    tmp_path, small_config
):
    out = tmp_path / "made"
    first = make_synthetic_dataset(small_config, out)
    written = {p: p.stat().st_mtime_ns for p in first.paths}
    again = make_synthetic_dataset(small_config, out)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in again.paths} == written  # nothing re-rendered
    first.paths[0].unlink()  # a lost video: the folder is made again
    remade = make_synthetic_dataset(small_config, out)
    assert remade.paths[0].is_file()
    reseeded = make_synthetic_dataset(small_config.model_copy(update={"seed": 5}), out)
    assert {p: p.stat().st_mtime_ns for p in reseeded.paths} != written
