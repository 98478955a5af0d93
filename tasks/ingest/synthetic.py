"""Synthetic demo dataset: class-labelled videos of shapes and digits moving in known ways.

Each video shows one object (circle, square, triangle or a digit) on a gradient background,
moving with one of several motion classes. Everything a video shows is drawn from an RNG seeded
by (seed, index), so a dataset is reproducible and growing `count` leaves earlier videos as they
were. Frames are rasterised with numpy and encoded to real mp4 (libx264, yuv420p) with PyAV.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from tasks.data.video import write_frames_mp4
from tasks.ingest.config import (
    MOTION_CLASSES,
    SHAPES,
    SyntheticDatasetConfig,
)

MANIFEST_NAME = "labels.jsonl"
STAMP_NAME = ".made-by.json"  # the config that wrote the folder, written after everything else

# Named colours so a caption can say what the video shows; each video jitters them a little.
_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 220),
    "yellow": (235, 215, 50),
    "cyan": (50, 205, 215),
    "magenta": (205, 55, 195),
    "orange": (240, 140, 30),
    "purple": (115, 55, 175),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "navy": (20, 30, 95),
    "brown": (120, 70, 30),
    "pink": (245, 160, 190),
}
# Foreground and background must stay apart after jitter and compression, so that the object is
# always visible and tests can segment it by colour difference.
_MIN_COLOUR_DISTANCE = 150.0

# 5x7 bitmap font for the digits 0-9.
_DIGIT_ROWS: dict[int, tuple[str, ...]] = {
    0: ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    1: ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    2: ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    3: ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    4: ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    5: ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    6: ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    7: ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    8: ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    9: ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}
_DIGIT_BITMAPS: dict[int, np.ndarray] = {
    d: np.array([[c == "1" for c in row] for row in rows]) for d, rows in _DIGIT_ROWS.items()
}

# Thin glyph strokes vanish at small sizes, so digits are drawn this much larger than shapes.
_DIGIT_SHRINK = 0.8

# Equilateral triangle inscribed in the unit circle, apex up (image y grows downwards).
_TRIANGLE = np.array([[0.0, -1.0], [0.866, 0.5], [-0.866, 0.5]])

ProgressCallback = Callable[[int, int], None]


class SyntheticVideo(BaseModel):
    """One written video and its label."""

    path: Path
    label: str
    label_id: int
    caption: str


class SyntheticDatasetResult(BaseModel):
    """What `make_synthetic_dataset` wrote: the videos in index order and the manifest."""

    out_dir: Path
    manifest_path: Path
    videos: list[SyntheticVideo]

    @property
    def paths(self) -> list[Path]:
        """Video paths in index order."""
        return [v.path for v in self.videos]

    @property
    def labels(self) -> list[str]:
        """Class names in index order."""
        return [v.label for v in self.videos]


@dataclass(frozen=True)
class RenderedVideo:
    """A rendered, not yet encoded, video: frames (T,H,W,3) uint8 and object masks (T,H,W)."""

    frames: np.ndarray
    masks: np.ndarray
    label: str
    label_id: int
    caption: str


@dataclass(frozen=True)
class _Track:
    """Where the object is in every frame: centre, half-size and angle, each shape (T,)."""

    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    words: str  # how the caption describes the motion


def video_name(label: str, index: int) -> str:
    """File name of video `index` with class `label`. The index leads: ingestion cuts inputs
    sorted by key into shards, and labels cycle with the index, so every shard (and so a
    held-out shard) holds every class instead of the last classes alone."""
    return f"{index:05d}_{label}.mp4"


def video_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG for one video, derived from (seed, index) alone so videos are independent."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def render_video(config: SyntheticDatasetConfig, index: int) -> RenderedVideo:
    """Draw video `index` of the dataset `config` describes, without encoding it."""
    label_id = index % len(config.classes)
    label = config.classes[label_id]
    rng = video_rng(config.seed, index)
    w, h, t = config.width, config.height, config.frames

    # Rotating a circle shows nothing, so "rotate" draws among the other shapes.
    shapes = [s for s in config.shapes if not (label == "rotate" and s == "circle")]
    shape = shapes[int(rng.integers(len(shapes)))]
    digit = int(rng.integers(10))
    bg_name, bg_top, bg_bottom, fg_name, fg = _pick_colours(rng)
    gradient_angle = rng.uniform(0.0, 2.0 * math.pi)
    track = _motion_track(label, rng, w, h, t)

    background = _gradient(w, h, bg_top, bg_bottom, gradient_angle)
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    masks = np.empty((t, h, w), dtype=bool)
    for i in range(t):
        alpha = _coverage(
            shape, digit, w, h, track.cx[i], track.cy[i], track.radius[i], track.angle[i]
        )
        frame = background * (1.0 - alpha[..., None]) + fg * alpha[..., None]
        frames[i] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        masks[i] = alpha >= 0.5

    thing = f"digit {digit}" if shape == "digit" else shape
    fg_words = f"{_article(fg_name)} {fg_name} {thing}"
    bg_words = f"{_article(bg_name)} {bg_name} background"
    caption = f"{fg_words} {track.words} on {bg_words}"
    return RenderedVideo(frames, masks, label, label_id, caption)


def make_synthetic_dataset(
    config: SyntheticDatasetConfig,
    out_dir: str | Path,
    on_progress: ProgressCallback | None = None,
) -> SyntheticDatasetResult:
    """Write `config.count` labelled mp4 videos and `labels.jsonl` into `out_dir`.

    A folder this config filled before (its stamp matches and every video is there) is kept as
    it is: the videos are a pure function of the config, so re-rendering them would change nothing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / STAMP_NAME
    config_text = config.model_dump_json()
    made = _made_before(out, stamp, config_text)
    if made is not None:
        if on_progress is not None:
            on_progress(config.count, config.count)
        return made
    stamp.unlink(missing_ok=True)  # a half-rewritten folder must not look finished
    videos: list[SyntheticVideo] = []
    for index in range(config.count):
        rendered = render_video(config, index)
        path = out / video_name(rendered.label, index)
        write_frames_mp4(
            rendered.frames,
            path,
            fps=config.fps,
            codec=config.codec,
            crf=config.crf,
            preset=config.preset,
        )
        videos.append(
            SyntheticVideo(
                path=path,
                label=rendered.label,
                label_id=rendered.label_id,
                caption=rendered.caption,
            )
        )
        if on_progress is not None:
            on_progress(index + 1, config.count)

    rows = [
        json.dumps(
            {"path": v.path.name, "label": v.label, "label_id": v.label_id, "caption": v.caption}
        )
        for v in videos
    ]
    manifest = out / MANIFEST_NAME
    _write_atomic(manifest, ("\n".join(rows) + "\n" if rows else "").encode())
    _write_atomic(stamp, config_text.encode())  # last: the folder is complete
    return SyntheticDatasetResult(out_dir=out, manifest_path=manifest, videos=videos)


def _made_before(out: Path, stamp: Path, config_text: str) -> SyntheticDatasetResult | None:
    """The result of an earlier run with the same config whose files are all still there."""
    manifest = out / MANIFEST_NAME
    if not (stamp.is_file() and manifest.is_file()) or stamp.read_text() != config_text:
        return None
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    videos = [
        SyntheticVideo(
            path=out / row["path"], label=row["label"], label_id=row["label_id"],
            caption=row["caption"],
        )
        for row in rows
    ]  # fmt: skip
    if not all(video.path.is_file() for video in videos):
        return None
    return SyntheticDatasetResult(out_dir=out, manifest_path=manifest, videos=videos)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pick_colours(
    rng: np.random.Generator,
) -> tuple[str, np.ndarray, np.ndarray, str, np.ndarray]:
    names = list(_PALETTE)
    bg_name = names[int(rng.integers(len(names)))]
    bg = np.array(_PALETTE[bg_name], dtype=np.float64)
    # The gradient's far end is a darker or lighter shade of the same colour.
    bg_top = np.clip(bg + rng.uniform(-12, 12, 3), 0, 255)
    bg_bottom = np.clip(bg_top * rng.uniform(0.6, 1.0) + rng.uniform(0, 40), 0, 255)
    candidates = [
        n
        for n in names
        if np.linalg.norm(np.array(_PALETTE[n]) - bg_top) >= _MIN_COLOUR_DISTANCE + 30
        and np.linalg.norm(np.array(_PALETTE[n]) - bg_bottom) >= _MIN_COLOUR_DISTANCE + 30
    ]
    if not candidates:  # unreachable with this palette; keeps the object visible regardless
        candidates = ["white" if bg.mean() < 128 else "black"]
    fg_name = candidates[int(rng.integers(len(candidates)))]
    fg = np.clip(np.array(_PALETTE[fg_name], dtype=np.float64) + rng.uniform(-10, 10, 3), 0, 255)
    return bg_name, bg_top, bg_bottom, fg_name, fg


def _gradient(w: int, h: int, c0: np.ndarray, c1: np.ndarray, angle: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    proj = (xs / max(w - 1, 1) - 0.5) * math.cos(angle) + (ys / max(h - 1, 1) - 0.5) * math.sin(
        angle
    )
    s = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-9)
    return c0 * (1.0 - s[..., None]) + c1 * s[..., None]  # (H, W, 3) float


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _speed_word(fraction: float, low: float, high: float) -> str:
    return "slowly" if fraction < (low + high) / 2 else "quickly"


def _motion_track(label: str, rng: np.random.Generator, w: int, h: int, t: int) -> _Track:
    s = np.linspace(0.0, 1.0, t) if t > 1 else np.zeros(1)  # clip time in [0, 1]
    side = float(min(w, h))
    ones = np.ones(t)
    angle0 = rng.uniform(0.0, 2.0 * math.pi) if rng.random() < 0.5 else 0.0

    if label in ("left", "right", "up", "down"):
        radius = max(rng.uniform(0.08, 0.15) * side, 1.5)
        margin = radius * 1.3
        horizontal = label in ("left", "right")
        along, across = (w, h) if horizontal else (h, w)
        span = max(along - 2 * margin, 0.0)
        travel = rng.uniform(0.5, 0.9)  # of the free span: about one object size or more
        start = margin + rng.uniform(0.0, 1.0 - travel) * span
        path = start + s * travel * span
        if label in ("left", "up"):
            path = along - path  # mirror so the object moves towards smaller x or y
        other = rng.uniform(margin, max(across - margin, margin)) * ones
        cx, cy = (path, other) if horizontal else (other, path)
        words = f"moves {label} {_speed_word(travel, 0.5, 0.9)}"
        return _Track(cx, cy, radius * ones, angle0 * ones, words)

    if label == "rotate":
        radius = max(rng.uniform(0.20, 0.30) * side, 1.5)
        turns = rng.uniform(0.25, 0.75)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        cx = w / 2 + rng.uniform(-0.1, 0.1) * side
        cy = h / 2 + rng.uniform(-0.1, 0.1) * side
        angle = angle0 + direction * 2.0 * math.pi * turns * s
        sense = "clockwise" if direction > 0 else "counterclockwise"
        words = f"rotates {sense} {_speed_word(turns, 0.25, 0.75)}"
        return _Track(cx * ones, cy * ones, radius * ones, angle, words)

    if label == "orbit":
        radius = max(rng.uniform(0.08, 0.12) * side, 1.5)
        orbit = rng.uniform(0.20, 0.30) * side
        turns = rng.uniform(0.5, 1.25)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        phase = rng.uniform(0.0, 2.0 * math.pi) + direction * 2.0 * math.pi * turns * s
        # Image y grows downwards, so increasing phase reads as clockwise on screen.
        cx = w / 2 + orbit * np.cos(phase)
        cy = h / 2 + orbit * np.sin(phase)
        sense = "clockwise" if direction > 0 else "counterclockwise"
        words = f"orbits the centre {sense} {_speed_word(turns, 0.5, 1.25)}"
        return _Track(cx, cy, radius * ones, angle0 * ones, words)

    if label == "bounce":
        radius = max(rng.uniform(0.08, 0.13) * side, 1.5)
        margin = radius * 1.2
        room = np.array([max(w - 2 * margin, 1e-6), max(h - 2 * margin, 1e-6)])
        heading = rng.uniform(0.2, 0.8) * (math.pi / 2) + (math.pi / 2) * int(rng.integers(4))
        distance = rng.uniform(1.2, 2.5) * room.mean()  # long enough to hit at least one wall
        start = rng.uniform(0.0, 1.0, 2) * room
        raw = start[:, None] + np.array([[math.cos(heading)], [math.sin(heading)]]) * (distance * s)
        folded = np.mod(raw, 2 * room[:, None])
        folded = np.where(folded > room[:, None], 2 * room[:, None] - folded, folded)
        words = f"bounces off the edges {_speed_word(distance / room.mean(), 1.2, 2.5)}"
        return _Track(margin + folded[0], margin + folded[1], radius * ones, angle0 * ones, words)

    if label in ("zoom_in", "zoom_out"):
        small = max(rng.uniform(0.06, 0.10) * side, 1.0)
        large = rng.uniform(0.28, 0.38) * side
        growth = s if label == "zoom_in" else 1.0 - s
        radius = small * (large / small) ** growth  # geometric: constant apparent zoom rate
        cx = w / 2 + rng.uniform(-0.08, 0.08) * side
        cy = h / 2 + rng.uniform(-0.08, 0.08) * side
        words = "grows towards the camera" if label == "zoom_in" else "shrinks into the distance"
        return _Track(cx * ones, cy * ones, radius, angle0 * ones, words)

    raise ValueError(f"unknown motion class {label!r}; known: {list(MOTION_CLASSES)}")


def _coverage(
    shape: str,
    digit: int,
    w: int,
    h: int,
    cx: float,
    cy: float,
    radius: float,
    angle: float,
) -> np.ndarray:
    """Fraction of each pixel the object covers, (H, W) float, from 2x2 supersampling."""
    alpha = np.zeros((h, w))
    # Only the object's bounding box is sampled, so large frames cost little more than small.
    reach = radius * 1.6 + 1.0  # covers a rotated, enlarged digit
    x0, x1 = max(int(cx - reach), 0), min(int(math.ceil(cx + reach)) + 1, w)
    y0, y1 = max(int(cy - reach), 0), min(int(math.ceil(cy + reach)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return alpha
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    box = np.zeros(ys.shape)
    for oy in (0.25, 0.75):
        for ox in (0.25, 0.75):
            dx, dy = xs + ox - cx, ys + oy - cy
            # Into the object's frame: undo the rotation, scale to the unit square.
            u = (dx * cos_a + dy * sin_a) / radius
            v = (-dx * sin_a + dy * cos_a) / radius
            box += _inside(shape, digit, u, v)
    alpha[y0:y1, x0:x1] = box / 4.0
    return alpha


def _inside(shape: str, digit: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "triangle":
        inside = np.ones(u.shape, dtype=bool)
        for a, b in zip(_TRIANGLE, np.roll(_TRIANGLE, -1, axis=0), strict=True):
            # Clockwise vertices on screen: inside is where every edge's cross product is >= 0.
            inside &= (b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0]) >= 0
        return inside
    if shape == "digit":
        bitmap = _DIGIT_BITMAPS[digit]
        rows, cols = bitmap.shape
        u, v = u * _DIGIT_SHRINK, v * _DIGIT_SHRINK
        half_width = cols / rows  # glyph keeps the font's 5:7 aspect, height spans [-1, 1]
        col = np.floor((u + half_width) / (2 * half_width) * cols).astype(int)
        row = np.floor((v + 1.0) / 2.0 * rows).astype(int)
        valid = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
        return valid & bitmap[np.clip(row, 0, rows - 1), np.clip(col, 0, cols - 1)]
    raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")


__all__ = [
    "MANIFEST_NAME",
    "RenderedVideo",
    "SyntheticDatasetResult",
    "SyntheticVideo",
    "make_synthetic_dataset",
    "render_video",
    "video_name",
    "video_rng",
]
