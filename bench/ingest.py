"""Ingestion throughput against a bare decord decode loop over the same files and frames.

Ingestion (2 worker processes) probes, decodes, resamples, re-encodes and shards; the bare loop
(one process) only decodes the same frame indices with decord. Runs alternate A/B; medians.
Usage: python bench/ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import goal, write_results  # noqa: E402
from tasks.ingest.config import IngestConfig, SyntheticDatasetConfig  # noqa: E402
from tasks.ingest.decode import clip_spans, probe_video, resample_indices  # noqa: E402
from tasks.ingest.run import ingest_dataset  # noqa: E402
from tasks.ingest.synthetic import make_synthetic_dataset  # noqa: E402


def bare_decord_loop(paths: list[Path], config: IngestConfig) -> tuple[float, int, int]:
    """Decode exactly the frames ingestion decodes, with decord, in one process: (s, clips, frames)."""
    import decord

    started = time.perf_counter()
    clips = frames = 0
    for path in paths:
        probe = probe_video(str(path))
        indices = resample_indices(probe.frames, probe.fps, config.fps)
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        for start, end in clip_spans(len(indices), config.clip_frames, config.stride):
            batch = reader.get_batch(indices[start:end]).asnumpy()
            frames += batch.shape[0]
            clips += 1
    return time.perf_counter() - started, clips, frames


def main() -> None:
    """Run the benchmark and write bench/results/ingest.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller videos and 2 repeats")
    args = parser.parse_args()
    count, repeats = (16, 2) if args.quick else (48, 3)
    with tempfile.TemporaryDirectory(prefix="arvid-bench-ingest-") as tmp:
        root = Path(tmp)
        data = SyntheticDatasetConfig(
            count=count, width=256, height=256, fps=24, frames=240, seed=0, preset="veryfast"
        )
        made = make_synthetic_dataset(data, root / "raw")
        paths = made.paths

        def ingest_config(run: int) -> IngestConfig:
            return IngestConfig(
                source=str(root / "raw"),
                output_root=str(root / f"out-{run}"),
                fps=8,
                clip_frames=17,
                clip_stride=16,
                workers=2,
                progress=False,
            )

        bare_loop_config = ingest_config(0)
        bare_loop_config_warm = bare_decord_loop(paths[:2], bare_loop_config)  # warm the page cache
        del bare_loop_config_warm
        ingest_runs, bare_runs = [], []
        for run in range(repeats):
            summary = ingest_dataset(ingest_config(run))
            ingest_runs.append((summary.clips_new / summary.process_seconds, summary.frames_per_s))
            seconds, clips, frames = bare_decord_loop(paths, bare_loop_config)
            bare_runs.append((clips / seconds, frames / seconds))
    ingest_clips = statistics.median(r[0] for r in ingest_runs)
    ingest_frames = statistics.median(r[1] for r in ingest_runs)
    bare_clips = statistics.median(r[0] for r in bare_runs)
    bare_frames = statistics.median(r[1] for r in bare_runs)
    ratio = statistics.median(i[1] / b[1] for i, b in zip(ingest_runs, bare_runs, strict=True))
    figures = {
        "videos": count,
        "video_shape": "240 frames, 256x256, 24 fps -> 8 fps, 17-frame clips at stride 16",
        "clips": summary.clips_total,
        "repeats": repeats,
        "ingest_workers": 2,
        "ingest_clips_per_s": round(ingest_clips, 2),
        "ingest_decoded_frames_per_s": round(ingest_frames, 1),
        "bare_decord_clips_per_s": round(bare_clips, 2),
        "bare_decord_frames_per_s": round(bare_frames, 1),
        "ingest_over_bare_decord_ratio": round(ratio, 3),
    }
    goals = [
        goal(
            "ingest_over_bare_decord_ratio",
            ratio,
            ">= 0.8 (2 worker processes, 2 cores)",
            ratio >= 0.8,
        )
    ]
    path = write_results("ingest", figures, goals)
    print(
        f"ingest {ingest_frames:.0f} frames/s vs bare decord {bare_frames:.0f} frames/s: ratio {ratio:.2f} -> {path}"
    )


if __name__ == "__main__":
    main()
