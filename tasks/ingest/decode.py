"""The work done for one input, inside a worker process: fetch, probe, filter, decode, resample, clip, encode.

Untrusted bytes are only ever decoded here, in a supervised worker (see workers.py): decord can
segfault or hang on broken containers, and that must cost one input, not the run.
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.data.video import write_frames_mp4
from tasks.ingest.config import IngestConfig
from tasks.ingest.quarantine import QuarantineRecord, Reason, Rejected
from tasks.ingest.sources import SourceInput

# When the container only implies a frame count (from its duration), a decoder that yields less than
# this share of it is reading a truncated file. Stated counts (mp4) must match exactly.
TRUNCATION_TOLERANCE = 0.9


@dataclass(frozen=True)
class VideoProbe:
    """What the container header says about the first video stream (not trusted for frame counts)."""

    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    codec: str
    frames_exact: (
        bool  # the container stated the count (mp4 does); otherwise estimated from duration
    )


@dataclass
class ClipOutput:
    """One encoded clip and its metadata row."""

    key: str
    metadata: dict[str, Any]
    mp4: bytes


@dataclass
class InputResult:
    """Everything one input produced: clips, or a quarantine record, plus work counters."""

    key: str
    clips: list[ClipOutput] = field(default_factory=list)
    quarantine: QuarantineRecord | None = None
    decoded_frames: int = 0
    decoder: str = ""
    seconds: float = 0.0


def clip_key(input_key: str, clip_index: int) -> str:
    """A webdataset-safe clip key (no dots or slashes) that is unique and stable per input key."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", input_key).strip("_")[:60]
    digest = hashlib.sha1(input_key.encode()).hexdigest()[:8]
    return f"{stem}_{digest}_c{clip_index:04d}"


def probe_video(path: str) -> VideoProbe:
    """Read the container header with PyAV; rejects files that are not videos."""
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise Rejected(
            Reason.NOT_A_VIDEO, f"not a readable video container ({exc})", "probe"
        ) from exc
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise Rejected(
                Reason.NO_VIDEO_STREAM, f"no video stream (has: {', '.join(kinds)})", "probe"
            )
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        frames_exact = bool(stream.frames)
        frames = int(stream.frames or 0) or (round(duration * fps) if fps else 0)
        if fps <= 0:
            raise Rejected(Reason.NOT_A_VIDEO, "video stream has no frame rate", "probe")
        return VideoProbe(
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            fps=fps,
            frames=frames,
            duration_s=max(duration, frames / fps),
            codec=stream.codec_context.name,
            frames_exact=frames_exact,
        )


# Filters share one shape: (probe, config) -> a rejection or None. A pipeline is a list of them.
Filter = Callable[[VideoProbe, IngestConfig], Rejected | None]


def filter_min_resolution(probe: VideoProbe, config: IngestConfig) -> Rejected | None:
    """Reject videos smaller than min_width x min_height."""
    if probe.width < config.min_width or probe.height < config.min_height:
        return Rejected(
            Reason.TOO_SMALL,
            f"{probe.width}x{probe.height} is below the minimum {config.min_width}x{config.min_height} "
            "(ingest.min_width/min_height)",
            "filter",
        )
    return None


def filter_max_pixels(probe: VideoProbe, config: IngestConfig) -> Rejected | None:
    """Reject videos above the max-pixels bound before spending time decoding them."""
    pixels = probe.width * probe.height
    if pixels > config.max_pixels:
        return Rejected(
            Reason.TOO_MANY_PIXELS,
            f"{probe.width}x{probe.height} = {pixels} pixels exceeds ingest.max_pixels={config.max_pixels}",
            "filter",
        )
    return None


def filter_duration(probe: VideoProbe, config: IngestConfig) -> Rejected | None:
    """Reject videos outside [min_duration_s, max_duration_s]."""
    if probe.frames <= 1 or probe.duration_s < config.min_duration_s:
        return Rejected(
            Reason.TOO_SHORT,
            f"{probe.frames} frame(s), {probe.duration_s:.2f} s long; at least {config.min_duration_s} s "
            "needed (ingest.min_duration_s)",
            "filter",
        )
    if config.max_duration_s is not None and probe.duration_s > config.max_duration_s:
        return Rejected(
            Reason.TOO_LONG,
            f"{probe.duration_s:.1f} s long; at most {config.max_duration_s} s allowed (ingest.max_duration_s)",
            "filter",
        )
    return None


def filter_clip_length(probe: VideoProbe, config: IngestConfig) -> Rejected | None:
    """Reject videos too short to give one clip at the target frame rate."""
    available = resampled_length(probe.frames, probe.fps, config.fps)
    if available < config.clip_frames:
        return Rejected(
            Reason.TOO_FEW_FRAMES,
            f"{available} frame(s) at {config.fps:g} fps, at least {config.clip_frames} needed "
            "(ingest.clip_frames)",
            "filter",
        )
    return None


FILTERS: list[Filter] = [
    filter_min_resolution,
    filter_max_pixels,
    filter_duration,
    filter_clip_length,
]


def resampled_length(source_frames: int, source_fps: float, target_fps: float) -> int:
    """How many frames a video of `source_frames` at `source_fps` has when resampled to `target_fps`."""
    if source_frames <= 0 or source_fps <= 0:
        return 0
    return int(math.floor(source_frames / source_fps * target_fps + 1e-9))


def resample_indices(source_frames: int, source_fps: float, target_fps: float) -> list[int]:
    """Source frame index shown at each target frame time (the frame at or just before t = j / fps)."""
    count = resampled_length(source_frames, source_fps, target_fps)
    ratio = source_fps / target_fps
    return [min(source_frames - 1, int(math.floor(j * ratio + 1e-9))) for j in range(count)]


def clip_spans(length: int, clip_frames: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans of fixed-length clips over `length` resampled frames."""
    return [(start, start + clip_frames) for start in range(0, length - clip_frames + 1, stride)]


def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Even (width, height) of the clips: optionally resized so the short side is `short_side`."""
    if short_side is not None:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return width - width % 2, height - height % 2


class _Decoder:
    """decord first; PyAV when decord is missing or fails on this file.

    A file whose header promises more frames than decode (cut off, or damaged at the end) is
    `partial`: with `strict` it is rejected as truncated; otherwise the clips that lie wholly in
    the frames that decoded cleanly are kept, and the rest are dropped (None).
    """

    def __init__(
        self, path: str, probe: VideoProbe, size: tuple[int, int], strict: bool = False
    ) -> None:
        self.path = path
        self.probe = probe
        self.size = size
        self.strict = strict
        self.name = "decord"
        self.decoded = 0
        self.partial = False

    def _expected_at_least(self) -> int:
        if self.probe.frames_exact:
            return self.probe.frames
        return math.ceil(TRUNCATION_TOLERANCE * self.probe.frames)

    def clips(self, spans: list[list[int]]) -> list[np.ndarray | None]:
        """Frames (T, H, W, 3) uint8 for each list of source indices; None where it did not decode."""
        try:
            return self._decord(spans)
        except Exception:  # noqa: BLE001 - any decord failure means: try the other decoder
            self.name = "pyav"
            self.decoded = 0
            return self._pyav(spans)

    def _decord(self, spans: list[list[int]]) -> list[np.ndarray | None]:
        import decord

        width, height = self.size
        resize = (
            {}
            if (width, height) == (self.probe.width, self.probe.height)
            else {"width": width, "height": height}
        )
        reader = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=1, **resize)
        if len(reader) < self._expected_at_least():
            raise RuntimeError(f"decord sees {len(reader)} of {self.probe.frames} frames")
        out: list[np.ndarray | None] = []
        for indices in spans:
            batch = reader.get_batch(indices).asnumpy()
            self.decoded += len(indices)
            out.append(self._crop_even(batch))
        # A cut-off file can have a complete index but missing data: the last frame must decode.
        # Read after the clips, the decoder is already near the end, so this costs a few frames.
        reader.get_batch([len(reader) - 1])
        return out

    def _pyav(self, spans: list[list[int]]) -> list[np.ndarray | None]:
        needed = {i for indices in spans for i in indices}
        frames, error = self._pyav_frames(needed)
        count = self.decoded
        if count >= self._expected_at_least() and needed <= frames.keys():
            return [self._crop_even(np.stack([frames[i] for i in indices])) for indices in spans]
        # Decoding to the end is what tells a truncated file apart from a complete one.
        detail = f" ({error})" if error else ""
        problem = f"header promises {self.probe.frames} frames, only {count} decode{detail}"
        if self.strict:
            raise Rejected(
                Reason.TRUNCATED, f"{problem} (ingest.strict_frame_count is on)", "decode"
            )
        kept = [
            self._crop_even(np.stack([frames[i] for i in indices]))
            if set(indices) <= frames.keys()
            else None
            for indices in spans
        ]
        if not any(clip is not None for clip in kept):
            raise Rejected(
                Reason.TRUNCATED,
                f"{problem}: no whole clip among them (ingest.clip_frames)",
                "decode",
            )
        self.partial = True
        return kept

    def _pyav_frames(self, needed: set[int]) -> tuple[dict[int, np.ndarray], Exception | None]:
        """The needed frames of the clean decoded prefix, by index, and the error that ended it."""
        import av

        frames: dict[int, np.ndarray] = {}
        width, height = self.size
        error: Exception | None = None

        def take(decoded: list[av.VideoFrame]) -> bool:
            for frame in decoded:
                if frame.is_corrupt:
                    return False
                if self.decoded in needed:
                    frames[self.decoded] = frame.to_ndarray(
                        format="rgb24", width=width, height=height
                    )
                self.decoded += 1
            return True

        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                packets = 0
                for packet in container.demux(stream):
                    if packet.size == 0:  # demux ends with an empty packet: end of the stream
                        break
                    # A packet cut short by the end of the file decodes to a damaged frame.
                    if packet.is_corrupt or not take(stream.decode(packet)):
                        break
                    packets += 1
                else:
                    packets = -1  # demux stopped without its end marker: treat as cut off
                # Flushing a cut-off stream would emit frames held back for reordering past the
                # gap (B-frames whose neighbours are missing), so only a whole stream is flushed.
                if packets >= self._expected_at_least():
                    take(stream.decode(None))
        except av.error.FFmpegError as exc:
            error = exc
        return frames, error

    def _crop_even(self, batch: np.ndarray) -> np.ndarray:
        width, height = self.size
        return batch[:, :height, :width]


def _fetch(item: SourceInput, scratch: Path) -> str:
    """A local path holding the input's bytes (S3 objects are downloaded to scratch)."""
    if not storage.is_s3(item.uri):
        path = Path(item.uri.removeprefix("file://"))
        if not path.exists():
            raise Rejected(Reason.MISSING, "file not found", "fetch")
        return str(path)
    local = scratch / "input" / Path(item.key).name
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        storage.download_file(item.uri, local)
    except storage.ObjectNotFound as exc:
        raise Rejected(Reason.MISSING, f"not found ({exc})", "fetch") from exc
    except storage.AccessDenied as exc:
        raise Rejected(Reason.FORBIDDEN, f"access denied ({exc})", "fetch") from exc
    except storage.StorageError as exc:
        raise Rejected(Reason.READ_ERROR, f"cannot be read ({exc})", "fetch") from exc
    return str(local)


def process_input(item: SourceInput, config: IngestConfig) -> InputResult:
    """Turn one input into encoded clips, or into a quarantine record naming the reason."""
    started = time.perf_counter()
    result = InputResult(key=item.key)
    with tempfile.TemporaryDirectory(prefix="arvid-ingest-") as scratch:
        try:
            path = _fetch(item, Path(scratch))
            if Path(path).stat().st_size == 0:
                raise Rejected(Reason.EMPTY_FILE, "empty file (0 bytes)", "probe")
            probe = probe_video(path)
            for check in FILTERS:
                rejection = check(probe, config)
                if rejection is not None:
                    raise rejection
            result.clips, result.decoded_frames, result.decoder = _make_clips(
                item, path, probe, config
            )
        except Rejected as rejection:
            result.quarantine = rejection.record(item.key)
    result.seconds = time.perf_counter() - started
    return result


def _make_clips(
    item: SourceInput, path: str, probe: VideoProbe, config: IngestConfig
) -> tuple[list[ClipOutput], int, str]:
    indices = resample_indices(probe.frames, probe.fps, config.fps)
    spans = clip_spans(len(indices), config.clip_frames, config.stride)
    source_spans = [indices[start:end] for start, end in spans]
    size = output_size(probe.width, probe.height, config.resize_short_side)
    decoder = _Decoder(path, probe, size, strict=config.strict_frame_count)
    clips = []
    for clip_index, frames in enumerate(decoder.clips(source_spans)):
        if frames is None:  # beyond what a partial input decoded
            continue
        mp4 = write_frames_mp4(
            frames, fps=config.fps, crf=config.clip_crf, preset=config.clip_preset
        )
        source_indices = source_spans[clip_index]
        key = clip_key(item.key, clip_index)
        metadata: dict[str, Any] = {
            "key": key,
            "input": item.key,
            "clip_index": clip_index,
            "label": item.label,
            "caption": item.caption,
            "source_start_s": round(source_indices[0] / probe.fps, 6),
            "source_end_s": round((source_indices[-1] + 1) / probe.fps, 6),
            "fps": config.fps,
            "frames": int(frames.shape[0]),
            "height": int(frames.shape[1]),
            "width": int(frames.shape[2]),
            "sha256": hashlib.sha256(mp4).hexdigest(),
            "source_metadata": item.metadata,
        }
        if decoder.partial:
            # Only rows of partial inputs carry these, so whole inputs keep their rows (and the
            # dataset version) exactly as before.
            metadata.update(
                partial=True,
                source_frames_decoded=decoder.decoded,
                source_frames_promised=probe.frames,
            )
        clips.append(ClipOutput(key=key, mp4=mp4, metadata=metadata))
    return clips, decoder.decoded, decoder.name
