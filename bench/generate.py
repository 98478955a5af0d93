"""Sampling speed of each generation schedule: steps and seconds per video, speed-up over NTP.

One ~60M-parameter class-conditional generator with NBP's 64,000-code vocabulary on a 5×16×16
latent grid (17 frames at 128²), random weights (speed does not depend on them). Schedules are
timed A-B interleaved inside each repeat, after a warm-up, and the median is reported.

    python bench/generate.py            # batch 1: 5 repeats, batch 16: 3 repeats (~25 min)
    python bench/generate.py --quick    # batch 1: 3 repeats, batch 16: 1 run (~11 min)
    python bench/generate.py --only nbp_hybrid,par4_clip,par16_clip   # merge a few rows (+ ntp)

Writes bench/results/generate.json (format: BENCH.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script: import from the checkout, and keep bench/ itself off the path, where a
# module named like a stdlib one (as a bench/tokenize.py once did) would shadow it.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bench.results_io import goal, write_results  # noqa: E402
from models.generator import Generator, GeneratorConfig, generate, sample_logits  # noqa: E402
from models.generator.config import VideoARConfig  # noqa: E402
from models.generator.schedules import Schedule, nbp, ntp, par  # noqa: E402
from models.generator.videoar import VideoAR, generate_videoar  # noqa: E402

GRID = (5, 16, 16)
MODEL = GeneratorConfig(vocab_size=64_000, num_classes=101, n_layer=8, n_head=6, n_embd=384)
# VideoAR on the same latent grid: scales 1,2,4,8,16 of each 16x16 latent frame (T*K = 25 steps).
# "next_scale" keeps the first version's pooled previous-frame input, so its figures stay
# comparable with earlier runs; "next_scale_full_context" adds 256 context rows to each later
# frame's first step (VideoARConfig.frame_context, the default for new models).
NEXT_SCALE = VideoARConfig(
    levels=[8, 8, 8, 5, 5, 5],
    scales=[1, 2, 4, 8, 16],
    latent_hw=GRID[1:],
    frame_context="pooled",
)
NEXT_SCALE_FULL_CONTEXT = NEXT_SCALE.model_copy(update={"frame_context": "full"})
SCHEDULES = {
    "ntp": lambda: ntp(GRID),
    "nbp_row": lambda: nbp(GRID, (1, 1, 16)),
    "nbp_frame": lambda: nbp(GRID, (1, 16, 16)),
    "nbp_hybrid": lambda: nbp(GRID, (1, 1, 16), hybrid_prefix=16),  # NBP's UCF setting: 95 steps
    "par4": lambda: par(GRID, 4),
    "par16": lambda: par(GRID, 16),
    "par4_clip": lambda: par(GRID, 4, prefix="clip"),  # PAR's video steps: 323
    "par16_clip": lambda: par(GRID, 16, prefix="clip"),  # 95
    # VideoAR: one step per (frame, scale), see time_one
    "next_scale": lambda: NEXT_SCALE,
    "next_scale_full_context": lambda: NEXT_SCALE_FULL_CONTEXT,
}
SPEEDUP_GOAL_B1 = 5.0  # issue 4: nbp row wall-clock speed-up at batch 1 on the CPU
NEXT_SCALE_STEP_GOAL = 10.0  # issue 5: >= 10x fewer steps than ntp
NEXT_SCALE_SPEEDUP_GOAL = 5.0  # issue 5: >= 5x less wall-clock than ntp on the CPU
_videoar: dict[tuple[int, str], VideoAR] = {}


def videoar_for(model: Generator, config: VideoARConfig = NEXT_SCALE) -> VideoAR:
    """The VideoAR wrapper around the benchmark's generator (same transformer weights)."""
    key = (id(model), config.frame_context)
    if key not in _videoar:
        torch.manual_seed(0)
        _videoar[key] = VideoAR(model, config).eval()
    return _videoar[key]


def time_one(
    model: Generator, schedule: Schedule | VideoARConfig, batch: int, seed: int
) -> tuple[float, int]:
    """Seconds to sample one batch of videos, and the number of model forwards."""
    labels = torch.randint(
        0, MODEL.num_classes, (batch,), generator=torch.Generator().manual_seed(seed)
    )
    start = time.perf_counter()
    if isinstance(schedule, VideoARConfig):
        result = generate_videoar(
            videoar_for(model, schedule),
            GRID[0],
            labels,
            generator=torch.Generator().manual_seed(seed),
        )
    else:
        result = generate(model, schedule, labels, generator=torch.Generator().manual_seed(seed))
    return time.perf_counter() - start, result.steps


def measure(
    model: Generator, batch: int, repeats: int, log, only: list[str] | None = None
) -> dict[str, dict]:
    """Median seconds per batch for every schedule, the schedules interleaved in each repeat."""
    schedules = {name: make() for name, make in SCHEDULES.items() if not only or name in only}
    times: dict[str, list[float]] = {name: [] for name in schedules}
    steps: dict[str, int] = {}
    for r in range(repeats):
        for name, schedule in schedules.items():
            seconds, steps[name] = time_one(model, schedule, batch, seed=r)
            times[name].append(seconds)
            log(
                f"batch {batch} repeat {r + 1}/{repeats} {name}: {steps[name]} steps, {seconds:.2f} s"
            )
    return {
        name: {"steps": steps[name], "median_s": statistics.median(t), "runs_s": t}
        for name, t in times.items()
    }


def median_ms(fn, runs: int = 15) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 2)


@torch.no_grad()
def per_step_costs(model: Generator) -> dict[str, float]:
    """What one decoding step spends on the output head and on sampling, for 1 and 16 positions."""
    costs = {}
    for rows in (1, 16):
        hidden = torch.randn(1, rows, MODEL.n_embd)
        logits = torch.randn(rows, MODEL.vocab_size)
        costs[f"head_{rows}_positions_ms"] = median_ms(lambda h=hidden: model.project_to_vocab(h))
        costs[f"sample_plain_{rows}_positions_ms"] = median_ms(lambda x=logits: sample_logits(x))
        costs[f"sample_topk16000_topp0.9_{rows}_positions_ms"] = median_ms(
            lambda x=logits: sample_logits(x, top_k=16_000, top_p=0.9)
        )
    return costs


def write_partial(per_schedule: dict[str, dict], only: list[str], args, log) -> None:
    """Merge a batch-1 run of a few schedules (ntp among them) into the existing results file."""
    import json

    path = Path(__file__).resolve().parent / "results" / "generate.json"
    previous = json.loads(path.read_text()) if path.exists() else {"figures": {}, "goals": []}
    figures = dict(previous["figures"])
    ntp_seconds = per_schedule["ntp"]["median_s"]
    for name, r in per_schedule.items():
        # The partial run's own ntp keeps a key of its own: the other schedules' ratios were
        # taken against the ntp of the full run.
        key = "ntp_partial_run" if name == "ntp" else name
        figures[f"{name}_steps"] = r["steps"]
        figures[f"{key}_b1_s_per_video"] = round(r["median_s"], 4)
        if name != "ntp":
            figures[f"{key}_b1_speedup_over_ntp_ratio"] = round(ntp_seconds / r["median_s"], 3)
    figures["partial_run"] = (
        f"batch-1 figures of {', '.join(only)} come from a later run with --only (ratios against "
        "that run's own interleaved ntp); the other figures from the run before it"
    )
    goals = [g for g in previous["goals"] if not g["figure"].startswith("next_scale")]
    if "next_scale" in per_schedule:
        step_ratio = figures["ntp_steps"] / figures["next_scale_steps"]
        figures["next_scale_fewer_steps_than_ntp_ratio"] = round(step_ratio, 2)
        figures["next_scale_tokens_per_video"] = GRID[0] * sum(s * s for s in NEXT_SCALE.scales)
        speedup = figures["next_scale_b1_speedup_over_ntp_ratio"]
        goals += [
            goal("next_scale_fewer_steps_than_ntp_ratio", step_ratio,
                 f">= {NEXT_SCALE_STEP_GOAL:g} (steps)", step_ratio >= NEXT_SCALE_STEP_GOAL),
            goal("next_scale_b1_speedup_over_ntp_ratio", speedup,
                 f">= {NEXT_SCALE_SPEEDUP_GOAL:g} (CPU wall-clock, batch 1)",
                 speedup >= NEXT_SCALE_SPEEDUP_GOAL),
        ]  # fmt: skip
    device = f"cpu ({os.cpu_count()} cores, shared with other jobs while measured)"
    out = write_results("generate", figures, goals, device=device)
    log(f"merged {', '.join(only)} into {out.name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="batch 1: 3 repeats; batch 16: one run"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on a 2-core machine shared with other jobs, 2 OpenMP threads "
        "made timings 4-5x slower and erratic; use 2 on a quiet machine)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated schedules (ntp always included) measured at batch 1 only; their "
        "figures replace those in the existing results file, the rest are kept",
    )
    args = parser.parse_args()
    only = sorted({"ntp", *args.only.split(",")}) if args.only else None
    unknown = sorted(set(only or []) - set(SCHEDULES))
    if unknown:
        parser.error(f"--only {', '.join(unknown)}: unknown; choose from {', '.join(SCHEDULES)}")

    torch.set_num_threads(args.threads)
    repeats_b1, repeats_b16 = (3, 1) if args.quick else (5, 3)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {message}", flush=True)

    torch.manual_seed(0)
    model = Generator(MODEL).eval()
    log(f"model: {model.num_params() / 1e6:.1f}M parameters, grid {GRID}, {args.threads} threads")

    # Warm-up: every schedule once on a one-frame grid (allocator, kernels, code paths).
    warm_grid = (1, 16, 16)
    for make in (
        lambda: ntp(warm_grid),
        lambda: nbp(warm_grid, (1, 1, 16)),
        lambda: par(warm_grid, 16),
    ):
        generate(model, make(), torch.tensor([0]))
    for config in (NEXT_SCALE, NEXT_SCALE_FULL_CONTEXT):
        generate_videoar(videoar_for(model, config), 1, torch.tensor([0]))
    log("warm-up done")

    if only:
        results = {1: measure(model, 1, repeats_b1, log, only)}
        write_partial(results[1], only, args, log)
        return
    costs = per_step_costs(model)
    log(f"per-step costs: {costs}")
    results = {1: measure(model, 1, repeats_b1, log), 16: measure(model, 16, repeats_b16, log)}

    figures: dict[str, float | int | str] = {
        "model_params": model.num_params(),
        "vocab_size": MODEL.vocab_size,
        "latent_grid": "5x16x16",
        "torch_threads": args.threads,
        "threads_note": "1 thread by default: the 2 cores were shared with other jobs, and 2 "
        "OpenMP threads made runs 4-5x slower and erratic there",
        "sampling": "class-conditional, no CFG, temperature 1, no top-k/top-p, inverse-CDF draw",
        "repeats_batch1": repeats_b1,
        "repeats_batch16": repeats_b16,
        "quick": "batch 1 median of 3 interleaved repeats, batch 16 a single interleaved run"
        if args.quick
        else "batch 1 median of 5 interleaved repeats, batch 16 median of 3",
    }
    figures.update(costs)
    for batch, per_schedule in results.items():
        ntp_seconds = per_schedule["ntp"]["median_s"]
        for name, r in per_schedule.items():
            figures[f"{name}_steps"] = r["steps"]
            figures[f"{name}_b{batch}_s_per_video"] = round(r["median_s"] / batch, 4)
            figures[f"{name}_b{batch}_speedup_over_ntp_ratio"] = round(
                ntp_seconds / r["median_s"], 3
            )
    speedup = figures["nbp_row_b1_speedup_over_ntp_ratio"]
    goals = [
        goal(
            "nbp_row_b1_speedup_over_ntp_ratio",
            speedup,
            f">= {SPEEDUP_GOAL_B1:g} (CPU, batch 1)",
            speedup >= SPEEDUP_GOAL_B1,
        )
    ]
    step_ratio = figures["ntp_steps"] / figures["next_scale_steps"]
    figures["next_scale_fewer_steps_than_ntp_ratio"] = round(step_ratio, 2)
    figures["next_scale_tokens_per_video"] = GRID[0] * sum(s * s for s in NEXT_SCALE.scales)
    ns_speedup = figures["next_scale_b1_speedup_over_ntp_ratio"]
    goals += [
        goal(
            "next_scale_fewer_steps_than_ntp_ratio",
            step_ratio,
            f">= {NEXT_SCALE_STEP_GOAL:g} (steps)",
            step_ratio >= NEXT_SCALE_STEP_GOAL,
        ),
        goal(
            "next_scale_b1_speedup_over_ntp_ratio",
            ns_speedup,
            f">= {NEXT_SCALE_SPEEDUP_GOAL:g} (CPU wall-clock, batch 1)",
            ns_speedup >= NEXT_SCALE_SPEEDUP_GOAL,
        ),
    ]
    device = f"cpu ({os.cpu_count()} cores, shared with other jobs while measured)"
    path = write_results("generate", figures, goals, device=device)
    log(f"wrote {path.name}")
    for line in goals:
        log(f"goal {line['figure']}: {line['value']} ({line['goal']}) met={line['met']}")


if __name__ == "__main__":
    main()
