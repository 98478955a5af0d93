"""Video files as arvid writes and reads them: encode frames to mp4, decode our own clips.

Untrusted input videos are decoded elsewhere (tasks/ingest/decode.py, in supervised worker
processes); the clips decoded here are arvid's own verified encodes.
"""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import overload

import av
import numpy as np
from av.codec.context import Flags as CodecFlags


@overload
def write_frames_mp4(
    frames: np.ndarray,
    path: None = None,
    *,
    fps: float | Fraction,
    codec: str = ...,
    crf: int = ...,
    preset: str = ...,
    faststart: bool = ...,
) -> bytes: ...
@overload
def write_frames_mp4(
    frames: np.ndarray,
    path: str | Path,
    *,
    fps: float | Fraction,
    codec: str = ...,
    crf: int = ...,
    preset: str = ...,
    faststart: bool = ...,
) -> Path: ...
def write_frames_mp4(
    frames: np.ndarray,
    path: str | Path | None = None,
    *,
    fps: float | Fraction,
    codec: str = "libx264",
    crf: int = 20,
    preset: str = "medium",
    faststart: bool = False,
) -> bytes | Path:
    """Encode (T,H,W,3) uint8 RGB frames to mp4: atomically to `path`, or return the bytes."""
    frames = _check_frames(frames)
    rate = _as_rate(fps)
    if path is not None:
        target = Path(path)
        # A temp name without .mp4 so a killed run never leaves something that looks finished.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            _encode(frames, str(tmp), rate, codec, crf, preset, faststart)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target
    if faststart:
        # The faststart pass re-reads the finished file by name, which an in-memory buffer lacks.
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir) / "clip.mp4"
            _encode(frames, str(tmp), rate, codec, crf, preset, faststart)
            return tmp.read_bytes()
    buffer = io.BytesIO()
    _encode(frames, buffer, rate, codec, crf, preset, faststart)
    return buffer.getvalue()


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("frames is empty; an mp4 needs at least 1 frame")
    for name, value in (("width", w), ("height", h)):
        if value % 2:
            raise ValueError(
                f"frame {name}={value} is odd; yuv420p needs even sizes (crop or pad to "
                f"{value - 1} or {value + 1})"
            )
    return np.ascontiguousarray(frames)


def _as_rate(fps: float | Fraction) -> Fraction:
    if fps <= 0:
        raise ValueError(f"fps={fps} must be positive")
    # Keeps 8 exact and 29.97 a small fraction, so the stream time base stays sane.
    return Fraction(fps).limit_denominator(1001)


def _encode(
    frames: np.ndarray,
    target: str | io.BytesIO,
    rate: Fraction,
    codec: str,
    crf: int,
    preset: str,
    faststart: bool,
) -> None:
    # bitexact keeps the FFmpeg version string out of the file, one less source of drift.
    mux_options = {"fflags": "+bitexact"}
    if faststart:
        mux_options["movflags"] = "+faststart"
    with av.open(target, mode="w", format="mp4", options=mux_options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # x264's frame threads make rate-control decisions depend on timing: one thread makes
        # the output bytes a function of the input alone.
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= CodecFlags.bitexact
        stream.options = _codec_options(codec, crf, preset)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _codec_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    if codec == "libx264":
        # MB-tree off: in the libx264 that PyAV wheels bundle (core 165), MB-tree's per-macroblock
        # QP offsets read a value the lookahead never initialised (valgrind: stack memory of its
        # frame-cost pass reaches macroblock_tree_finish), so the same frames could get other
        # QPs, and so other bytes, from one encode to the next. With MB-tree off valgrind finds
        # no uninitialised read in x264 (presets ultrafast and superfast turn it off anyway).
        return {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
    if codec == "libx265":
        return {"crf": str(crf), "preset": preset}
    if codec == "libvpx-vp9":
        return {"crf": str(crf), "b": "0"}  # b=0 selects constant-quality mode
    if codec in ("libsvtav1", "libaom-av1"):
        return {"crf": str(crf)}
    return {}


def decode_clip(mp4: bytes) -> np.ndarray:
    """All frames of an ingested clip as (T, H, W, 3) uint8 (our own verified encodes: PyAV in-process)."""
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
