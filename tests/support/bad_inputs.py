"""Makers of bad (and good) video inputs for the ingestion tests.

Each maker writes one small file into a given directory and returns its path; all are fast
(well under a second) and deterministic. The ingestion tests expect every bad one to become a
quarantine record that names the file and the reason, and every good one to land.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from tasks.data.video import write_frames_mp4
from tasks.ingest.config import SyntheticDatasetConfig
from tasks.ingest.synthetic import render_video


def write_good_video(
    directory: str | Path,
    name: str = "good.mp4",
    seconds: float = 2.0,
    fps: float = 8.0,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    *,
    faststart: bool = False,
) -> Path:
    """A valid synthetic mp4 of `seconds` (rounded to whole frames, at least 1) at `size`=(w, h)."""
    width, height = size
    frames = max(1, round(seconds * fps))
    config = SyntheticDatasetConfig(
        count=1, width=width, height=height, fps=fps, frames=frames, seed=seed
    )
    rendered = render_video(config, seed % len(config.classes))
    return write_frames_mp4(
        rendered.frames, Path(directory) / name, fps=fps, preset="ultrafast", faststart=faststart
    )


def write_mpeg_ps_video(
    directory: str | Path, name: str = "good.mpg", seconds: float = 3.0, fps: int = 25
) -> Path:
    """A valid MPEG-2 video in an MPEG program stream (.mpg), 64x64 (MPEG-2 allows only the
    broadcast frame rates, hence 25 fps)."""
    config = SyntheticDatasetConfig(
        count=1, width=64, height=64, fps=fps, frames=round(seconds * fps)
    )
    frames = render_video(config, 0).frames
    path = Path(directory) / name
    with av.open(str(path), mode="w", format="mpeg") as container:
        stream = container.add_stream("mpeg2video", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_zero_byte_mp4(directory: str | Path, name: str = "zero_bytes.mp4") -> Path:
    """An empty file named .mp4."""
    path = Path(directory) / name
    path.write_bytes(b"")
    return path


def write_truncated_mp4(
    directory: str | Path, name: str = "truncated.mp4", keep: float = 0.6
) -> Path:
    """A valid mp4 cut to `keep` of its bytes; its moov atom was at the end, so the cut loses it.

    Without moov no demuxer can find the stream layout: opening fails ("moov atom not found").
    decord segfaults on such bytes given as BytesIO, so decode them in a separate process.
    """
    return _truncate(directory, name, keep, faststart=False)


def write_truncated_faststart_mp4(
    directory: str | Path, name: str = "truncated_faststart.mp4", keep: float = 0.9
) -> Path:
    """A faststart mp4 (moov before the media data) cut to `keep` of its bytes.

    The header survives, so the file opens and claims every frame, but the tail of the media data
    is gone: decoding yields fewer frames than the header says, or fails part-way.
    """
    return _truncate(directory, name, keep, faststart=True)


def write_text_as_mp4(directory: str | Path, name: str = "not_a_video.mp4") -> Path:
    """A plain text file with an .mp4 name."""
    path = Path(directory) / name
    path.write_text("this is not a video, just text with an .mp4 name\n" * 4)
    return path


def write_audio_only_mp4(
    directory: str | Path, name: str = "audio_only.mp4", seconds: float = 0.5
) -> Path:
    """An mp4 with one AAC audio stream (a 440 Hz tone) and no video stream."""
    path = Path(directory) / name
    rate = 22050
    samples = int(seconds * rate)
    tone = 0.2 * np.sin(2 * math.pi * 440.0 * np.arange(samples) / rate)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame_size = stream.codec_context.frame_size or 1024  # AAC consumes 1024-sample frames
        for start in range(0, samples, frame_size):
            chunk = tone[start : start + frame_size].astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_one_frame_video(directory: str | Path, name: str = "one_frame.mp4") -> Path:
    """A valid mp4 holding a single frame."""
    return write_good_video(directory, name, seconds=1 / 8, fps=8.0, seed=1)


def write_short_video(
    directory: str | Path, name: str = "short.mp4", seconds: float = 0.3, fps: float = 10.0
) -> Path:
    """A valid mp4 of `seconds` (0.3 s by default): below any sensible minimum duration."""
    return write_good_video(directory, name, seconds=seconds, fps=fps, seed=2)


def write_oversized_video(
    directory: str | Path,
    name: str = "oversized.mp4",
    size: tuple[int, int] = (1280, 720),
    frames: int = 3,
) -> Path:
    """A valid mp4 at `size`=(w, h), 1280x720 by default: above a small max-pixels bound."""
    return write_good_video(directory, name, seconds=frames / 8.0, fps=8.0, size=size, seed=3)


# Every bad input keyed by what is wrong with it, for tests that want them all.
BAD_INPUT_MAKERS: dict[str, Callable[[str | Path], Path]] = {
    "zero_bytes": write_zero_byte_mp4,
    "truncated": write_truncated_mp4,
    "truncated_faststart": write_truncated_faststart_mp4,
    "text_as_mp4": write_text_as_mp4,
    "audio_only": write_audio_only_mp4,
    "one_frame": write_one_frame_video,
    "short": write_short_video,
    "oversized": write_oversized_video,
}


def write_all_bad_inputs(directory: str | Path) -> dict[str, Path]:
    """Write every bad input into `directory`, keyed as in BAD_INPUT_MAKERS."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return {kind: make(directory) for kind, make in BAD_INPUT_MAKERS.items()}


def _truncate(directory: str | Path, name: str, keep: float, *, faststart: bool) -> Path:
    if not 0.0 < keep < 1.0:
        raise ValueError(f"keep={keep} must be a fraction in (0, 1)")
    # Enough frames that the media data, not the header, dominates the file.
    whole = write_good_video(
        directory, f".whole_{name}", seconds=3.0, fps=8.0, seed=4, faststart=faststart
    )
    data = whole.read_bytes()
    whole.unlink()
    path = Path(directory) / name
    path.write_bytes(data[: int(len(data) * keep)])
    return path
