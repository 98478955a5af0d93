"""Sample videos as files people can look at: mp4 clips and one PNG contact sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.data.video import write_frames_mp4

SHEET_COLUMNS = 9  # frames per row of the contact sheet, evenly spaced through the clip
GAP = 2  # pixels between cells


def contact_sheet(videos: np.ndarray, path: Path, columns: int = SHEET_COLUMNS) -> Path:
    """One row per video (k, T, H, W, 3) uint8, `columns` evenly spaced frames per row, as PNG."""
    from PIL import Image

    if videos.ndim != 5 or videos.dtype != np.uint8 or len(videos) == 0:
        raise ValueError(
            f"videos of shape {videos.shape} ({videos.dtype}): need (k, T, H, W, 3) uint8"
        )
    k, t, h, w, _ = videos.shape
    picks = np.linspace(0, t - 1, min(columns, t)).round().astype(int)
    sheet = np.full(
        (k * h + (k - 1) * GAP, len(picks) * w + (len(picks) - 1) * GAP, 3), 255, np.uint8
    )
    for row, video in enumerate(videos):
        for col, frame in enumerate(picks):
            y, x = row * (h + GAP), col * (w + GAP)
            sheet[y : y + h, x : x + w] = video[frame]
    Image.fromarray(sheet).save(path, format="PNG")
    return path


def write_samples(videos: np.ndarray, names: list[str], folder: Path, fps: float) -> list[Path]:
    """Each video as `<folder>/<name>.mp4` (H.264); returns the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_frames_mp4(video, folder / f"{name}.mp4", fps=fps)
        for video, name in zip(videos, names, strict=True)
    ]
