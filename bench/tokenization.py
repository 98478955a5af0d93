"""Tokenization throughput on Ray: clips/s with 1 and 2 tokenizer actors on the CPU, and their ratio.

A synthetic dataset (64x64 clips of 17 frames) is tokenized by a random-weight tokenizer of the
default architecture at base_channels=16 (3M weights; encoding dominates decoding, as with a real
tokenizer). clips/s counts from the moment every actor has loaded the tokenizer to the last
published shard. Runs alternate 1 and 2 actors; medians. With --gpu: one actor on the GPU,
clips/s and the share of wall time the actor spent encoding (GPU busy share).
Usage: python bench/tokenization.py [--quick] [--gpu]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Named like the stdlib's `tokenize`: run as a script, its own folder would come first on
# sys.path and shadow it (and Ray hands the driver's script folder to its workers too).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

from bench.results_io import goal, write_results  # noqa: E402
from models.tokenizer import TokenizerConfig, VideoTokenizer, save_tokenizer  # noqa: E402
from tasks.ingest.config import IngestConfig, SyntheticDatasetConfig  # noqa: E402
from tasks.ingest.run import ingest_dataset  # noqa: E402
from tasks.ingest.synthetic import make_synthetic_dataset  # noqa: E402
from tasks.ray_runtime import RayConfig, ensure_ray  # noqa: E402
from tasks.settings import ArvidConfig  # noqa: E402
from tasks.tokenize.report import TokenizeSummary  # noqa: E402
from tasks.tokenize.run import tokenize_dataset  # noqa: E402


def run_once(root: Path, name: str, dataset: str, tokenizer: Path, **tokenize) -> TokenizeSummary:
    """Tokenize the dataset into a fresh tokens root and return the summary."""
    config = ArvidConfig.model_validate(
        {
            "tracking": {
                "uri": f"sqlite:///{root / 'mlflow.db'}",
                "experiment": "bench-tokenize",
                "artifact_location": str(root / "mlartifacts"),
            },
            "ingest": {"source": "unused", "output_root": "unused"},
            "tokenize": {
                "dataset": dataset,
                "tokenizer": str(tokenizer),
                "tokens_root": str(root / f"tokens-{name}"),
                "resolution": 64,
                "frames": 17,
                "batch_size": 2,
                "progress": False,
                **tokenize,
            },
        }
    )
    return tokenize_dataset(config)


def bare_encode_rate(clips: int) -> float:
    """clips/s of one process encoding random clips with the bench tokenizer on one thread."""
    import time

    import torch

    torch.set_num_threads(1)
    tokenizer = VideoTokenizer(TokenizerConfig(base_channels=16)).eval()
    video = torch.rand(2, 3, 17, 64, 64) * 2 - 1
    with torch.inference_mode():
        tokenizer.encode(video)  # warm-up
        started = time.perf_counter()
        for _ in range(clips // 2):
            tokenizer.encode(video)
    return clips / (time.perf_counter() - started)


def bare_scaling(clips: int) -> float:
    """Aggregate clips/s of 2 processes over 1 encoding at once: what this machine allows now."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    rates = {}
    for processes in (1, 2):
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            rates[processes] = sum(pool.map(bare_encode_rate, [clips] * processes))
    return rates[2] / rates[1]


def main() -> None:
    """Run the benchmark and write bench/results/tokenize.json (or tokenize.<gpu>.json)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 videos and 2 repeats")
    parser.add_argument("--gpu", action="store_true", help="one actor on the GPU instead")
    args = parser.parse_args()
    count, repeats = (8, 2) if args.quick else (16, 3)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="arvid-bench-tokenize-") as tmp:
        root = Path(tmp)
        make_synthetic_dataset(
            SyntheticDatasetConfig(count=count, frames=33, preset="veryfast"), root / "raw"
        )
        dataset = ingest_dataset(
            IngestConfig(
                source=str(root / "raw" / "labels.jsonl"),
                output_root=str(root / "datasets"),
                name="bench",
                clip_frames=17,
                clip_stride=16,
                inputs_per_shard=4,
                workers=2,
                progress=False,
            )
        )
        architecture = TokenizerConfig(base_channels=16)
        tokenizer = VideoTokenizer(architecture)
        weights = sum(p.numel() for p in tokenizer.parameters())
        save_tokenizer(tokenizer, root / "tokenizer")
        if args.gpu:
            gpu_bench(root, dataset.dataset_root, repeats, dataset.clips_total, weights)
            return
        ensure_ray(RayConfig(num_cpus=2))
        run_once(root, "warm", dataset.dataset_root, root / "tokenizer", num_actors=1)
        runs: dict[int, list[TokenizeSummary]] = {1: [], 2: []}
        bare: list[float] = []
        for repeat in range(repeats):
            bare.append(bare_scaling(8))
            for actors in (1, 2):
                summary = run_once(
                    root,
                    f"{actors}-{repeat}",
                    dataset.dataset_root,
                    root / "tokenizer",
                    num_actors=actors,
                )
                runs[actors].append(summary)
                print(f"{actors} actor(s): {summary.clips_per_s:.2f} clips/s", flush=True)
    ratios = [two.clips_per_s / one.clips_per_s for one, two in zip(runs[1], runs[2], strict=True)]
    ratio = statistics.median(ratios)
    one = statistics.median(s.clips_per_s for s in runs[1])
    two = statistics.median(s.clips_per_s for s in runs[2])
    figures = {
        "clips": dataset.clips_total,
        "clip_shape": "17 frames, 64x64 (synthetic, center crop), batches of 2",
        "tokenizer": f"default architecture at base_channels=16, {weights / 1e6:.1f}M weights, random",
        "repeats": repeats,
        "actor_num_cpus": 0.5,
        "decode_num_cpus": 0.5,
        "cpu_1_actor_clips_per_s": round(one, 3),
        "cpu_2_actors_clips_per_s": round(two, 3),
        "cpu_2_over_1_actor_ratio": round(ratio, 3),
        "cpu_1_actor_busy_ratio": round(statistics.median(s.actor_busy_ratio for s in runs[1]), 3),
        "cpu_2_actors_busy_ratio": round(statistics.median(s.actor_busy_ratio for s in runs[2]), 3),
        # The same encode loop without Ray, 2 processes vs 1, measured between the Ray runs:
        # the scaling this shared machine allowed at the time.
        "bare_encode_2_over_1_process_ratio": round(statistics.median(bare), 3),
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "gpu_measured": False,
    }
    goals = [
        goal(
            "cpu_2_over_1_actor_ratio",
            ratio,
            ">= 1.7 (2 Ray workers vs 1, CPU)",
            ratio >= 1.7,
        )
    ]
    path = write_results("tokenize", figures, goals)
    print(
        f"tokenize: 1 actor {one:.2f} clips/s, 2 actors {two:.2f} clips/s, x{ratio:.2f} -> {path}"
    )


def gpu_bench(root: Path, dataset: str, repeats: int, clips: int, weights: int) -> None:
    """One actor on one GPU: clips/s and the share of time it spent encoding."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible")
    ensure_ray(RayConfig(num_gpus=1))
    run_once(root, "gpu-warm", dataset, root / "tokenizer", device="cuda", batch_size=8)
    runs = [
        run_once(root, f"gpu-{r}", dataset, root / "tokenizer", device="cuda", batch_size=8)
        for r in range(repeats)
    ]
    rate = statistics.median(s.clips_per_s for s in runs)
    busy = statistics.median(s.actor_busy_ratio for s in runs)
    name = torch.cuda.get_device_name(0)
    figures = {
        "clips": clips,
        "clip_shape": "17 frames, 64x64 (synthetic, center crop), batches of 8",
        "tokenizer": f"default architecture at base_channels=16, {weights / 1e6:.1f}M weights, random",
        "repeats": repeats,
        "gpu_1_actor_clips_per_s": round(rate, 3),
        "gpu_busy_share": round(busy, 3),
    }
    goals = [goal("gpu_busy_share", busy, ">= 0.9 (one GPU)", busy >= 0.9)]
    # "NVIDIA H100 80GB HBM3" -> "h100", as in bench/results/<bench>.<gpu>.json
    model = re.search(r"\b([A-Z]{1,2}\d{1,4}[A-Za-z]?)\b", name)
    suffix = model.group(1).lower() if model else "gpu"
    path = write_results("tokenize", figures, goals, device=name, suffix=suffix)
    print(f"tokenize on {name}: {rate:.2f} clips/s, busy {busy:.0%} -> {path}")


if __name__ == "__main__":
    main()
