"""Sampling speed of each generation schedule: steps, seconds per video and per step, eager and
with fixed-shape replayed steps, speed-up over NTP.

One ~60M-parameter class-conditional generator with NBP's 64,000-code vocabulary on a 5×16×16
latent grid (17 frames at 128²), random weights (speed does not depend on them). Schedules and
decode modes are timed interleaved inside each repeat, after a warm-up, and the median is
reported. Each replayed mode's first run (which builds, captures or compiles its steps) is
reported on its own.

    python bench/generate.py            # batch 1: 5 repeats, batch 16: 3 repeats
    python bench/generate.py --quick    # batch 1: 3 repeats, batch 16: 1 run
    python bench/generate.py --only nbp_hybrid,par4_clip,par16_clip   # merge a few rows (+ ntp)
    python bench/generate.py --device cuda    # bf16, eager vs CUDA graphs, + a VideoAR-L model
    python bench/generate.py --tiny --out /tmp/generate.json   # smoke: 2 layers, 2 frames

Decode modes (--decode, see models/generator/static_decode.py): eager (the model's forward per
group); static (the fixed-shape step, run as is: the CPU default); graph (that step replayed from
a CUDA graph: the CUDA default); compiled (torch.compile of the step, captured on CUDA; minutes
of compilation on the CPU).

Writes bench/results/generate.json, or generate.<gpu>.json with --device cuda (format: BENCH.md).
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
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402

from bench.results_io import RESULTS_DIR, goal, write_results  # noqa: E402
from models.generator import Generator, GeneratorConfig, generate, sample_logits  # noqa: E402
from models.generator.config import VideoARConfig  # noqa: E402
from models.generator.schedules import Schedule, nbp, ntp, par  # noqa: E402
from models.generator.static_decode import DECODE_MODES  # noqa: E402
from models.generator.videoar import VideoAR, generate_videoar  # noqa: E402

GRID = (5, 16, 16)
MODEL = GeneratorConfig(vocab_size=64_000, num_classes=101, n_layer=8, n_head=6, n_embd=384)
# --tiny (a smoke run of the bench itself): same vocabulary and frames of 16x16, 2 frames.
TINY_GRID = (2, 16, 16)
TINY_MODEL = GeneratorConfig(vocab_size=64_000, num_classes=101, n_layer=2, n_head=2, n_embd=64)
# A VideoAR-L-sized model (issue 15): 24 x 1536, one 17-frame 128² video with CFG.
VIDEOAR_L = GeneratorConfig(vocab_size=64_000, num_classes=101, n_layer=24, n_head=12, n_embd=1536)
VIDEOAR_L_CFG = 3.0
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


def schedules(grid: tuple[int, int, int]) -> dict[str, Callable[[], Schedule | VideoARConfig]]:
    """Every measured schedule over ``grid`` (VideoAR rows are configs: see time_one)."""
    return {
        "ntp": lambda: ntp(grid),
        "nbp_row": lambda: nbp(grid, (1, 1, 16)),
        "nbp_frame": lambda: nbp(grid, (1, 16, 16)),
        "nbp_hybrid": lambda: nbp(grid, (1, 1, 16), hybrid_prefix=16),  # NBP's UCF: 95 steps
        "par4": lambda: par(grid, 4),
        "par16": lambda: par(grid, 16),
        "par4_clip": lambda: par(grid, 4, prefix="clip"),  # PAR's video steps: 323
        "par16_clip": lambda: par(grid, 16, prefix="clip"),  # 95
        # VideoAR: one step per (frame, scale)
        "next_scale": lambda: NEXT_SCALE,
        "next_scale_full_context": lambda: NEXT_SCALE_FULL_CONTEXT,
    }


SCHEDULE_NAMES = list(schedules(GRID))
SPEEDUP_GOAL_B1 = 5.0  # issue 4: nbp row wall-clock speed-up at batch 1 on the CPU
NEXT_SCALE_STEP_GOAL = 10.0  # issue 5: >= 10x fewer steps than ntp
NEXT_SCALE_SPEEDUP_GOAL = 5.0  # issue 5: >= 5x less wall-clock than ntp on the CPU
NTP_STEP_GOAL_MS = 0.5  # issue 15 (GPU): NTP step at batch 1, 63.5M model
BATCH16_GOAL = 8.0  # issue 15 (GPU): batch 16 >= 8x the videos/s of batch 1
VIDEOAR_L_GOAL_S = 0.15  # issue 15 (GPU): one VideoAR-L video, scales 1-16, CFG


@dataclass(frozen=True)
class Run:
    """Where and how the bench samples."""

    grid: tuple[int, int, int]
    device: torch.device
    dtype: torch.dtype

    def sync(self) -> None:
        """Wait for the device (a GPU runs asynchronously: time only finished work)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


_videoar: dict[tuple[int, str], VideoAR] = {}


def videoar_for(model: Generator, config: VideoARConfig = NEXT_SCALE) -> VideoAR:
    """The VideoAR wrapper around the benchmark's generator (same transformer weights)."""
    key = (id(model), config.frame_context)
    if key not in _videoar:
        torch.manual_seed(0)
        _videoar[key] = VideoAR(model, config).eval().to(model.head.weight.device)
    return _videoar[key]


def time_one(
    model: Generator,
    schedule: Schedule | VideoARConfig,
    batch: int,
    seed: int,
    run: Run,
    decode: str = "eager",
    cfg_scale: float | None = None,
) -> tuple[float, int]:
    """Seconds to sample one batch of videos, and the number of model forwards."""
    labels = torch.randint(
        0, model.config.num_classes, (batch,), generator=torch.Generator().manual_seed(seed)
    ).to(run.device)
    draws = torch.Generator(run.device).manual_seed(seed)
    run.sync()
    start = time.perf_counter()
    if isinstance(schedule, VideoARConfig):
        result = generate_videoar(
            videoar_for(model, schedule), run.grid[0], labels, generator=draws, decode=decode,
            cfg_scale=cfg_scale,
        )  # fmt: skip
    else:
        result = generate(
            model, schedule, labels, generator=draws, decode=decode, cfg_scale=cfg_scale
        )
    run.sync()
    return time.perf_counter() - start, result.steps


def measure(
    model: Generator,
    batch: int,
    repeats: int,
    log,
    run: Run,
    modes: list[str],
    only: list[str] | None = None,
) -> dict[str, dict[str, dict]]:
    """Median seconds per batch for every schedule and decode mode, interleaved in each repeat;
    per replayed mode also its first run (steps built, captured or compiled there)."""
    made = {name: make() for name, make in schedules(run.grid).items() if not only or name in only}
    times = {name: {mode: [] for mode in modes} for name in made}
    first: dict[str, dict[str, float]] = {name: {} for name in made}
    steps: dict[str, int] = {}
    for name, schedule in made.items():
        for mode in modes:
            if mode != "eager":  # eager's warm-up is the one-frame run in main
                first[name][mode], _ = time_one(model, schedule, batch, 0, run, mode)
    for r in range(repeats):
        for name, schedule in made.items():
            for mode in modes:
                seconds, steps[name] = time_one(model, schedule, batch, r, run, mode)
                times[name][mode].append(seconds)
                log(
                    f"batch {batch} repeat {r + 1}/{repeats} {name} {mode}: {steps[name]} steps, "
                    f"{seconds:.3f} s"
                )
    return {
        name: {
            mode: {
                "steps": steps[name],
                "median_s": statistics.median(t),
                "runs_s": t,
                "first_run_s": first[name].get(mode),
            }
            for mode, t in per_mode.items()
        }
        for name, per_mode in times.items()
    }


def schedule_figures(
    per_schedule: dict[str, dict[str, dict]], batch: int, ntp_key: str = "ntp"
) -> dict[str, float | int]:
    """Figures of one batch size: eager under the historical keys, each replayed mode beside it
    (``<schedule>_b<batch>_<mode>_...``), with per-step latency and speed-up over eager."""
    figures: dict[str, float | int] = {}
    ntp_seconds = per_schedule["ntp"]["eager"]["median_s"]
    for name, per_mode in per_schedule.items():
        key = ntp_key if name == "ntp" else name
        eager = per_mode["eager"]
        figures[f"{name}_steps"] = eager["steps"]
        figures[f"{key}_b{batch}_s_per_video"] = round(eager["median_s"] / batch, 4)
        figures[f"{key}_b{batch}_step_ms"] = round(eager["median_s"] / eager["steps"] * 1e3, 3)
        if name != "ntp" or ntp_key == "ntp":
            figures[f"{key}_b{batch}_speedup_over_ntp_ratio"] = round(
                ntp_seconds / eager["median_s"], 3
            )
        for mode, r in per_mode.items():
            if mode == "eager":
                continue
            prefix = f"{key}_b{batch}_{mode}"
            figures[f"{prefix}_s_per_video"] = round(r["median_s"] / batch, 4)
            figures[f"{prefix}_step_ms"] = round(r["median_s"] / r["steps"] * 1e3, 3)
            figures[f"{prefix}_speedup_over_eager_ratio"] = round(
                eager["median_s"] / r["median_s"], 3
            )
            figures[f"{prefix}_first_run_s"] = round(r["first_run_s"], 3)
    return figures


def median_ms(fn, run: Run, runs: int = 15) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        run.sync()
        start = time.perf_counter()
        fn()
        run.sync()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


@torch.no_grad()
def per_step_costs(model: Generator, run: Run) -> dict[str, float]:
    """What one decoding step spends on the output head and on sampling, for 1 and 16 positions."""
    costs = {}
    config = model.config
    for rows in (1, 16):
        hidden = torch.randn(1, rows, config.n_embd, device=run.device, dtype=run.dtype)
        logits = torch.randn(rows, config.vocab_size, device=run.device, dtype=run.dtype)
        costs[f"head_{rows}_positions_ms"] = median_ms(
            lambda h=hidden: model.project_to_vocab(h), run
        )
        costs[f"sample_plain_{rows}_positions_ms"] = median_ms(
            lambda x=logits: sample_logits(x), run
        )
        costs[f"sample_topk16000_topp0.9_{rows}_positions_ms"] = median_ms(
            lambda x=logits: sample_logits(x, top_k=16_000, top_p=0.9), run
        )
    return costs


@torch.no_grad()
def videoar_l(run: Run, modes: list[str], repeats: int, log) -> dict[str, float | int]:
    """Seconds for one 17-frame 128² video of a VideoAR-L-sized model with CFG, per mode."""
    torch.manual_seed(0)
    model = Generator(VIDEOAR_L).eval().to(run.device, run.dtype)
    config = NEXT_SCALE_FULL_CONTEXT
    figures: dict[str, float | int] = {"videoar_l_params": model.num_params()}
    for mode in modes:
        first, _ = time_one(model, config, 1, 0, run, mode, VIDEOAR_L_CFG)
        runs = [time_one(model, config, 1, r, run, mode, VIDEOAR_L_CFG)[0] for r in range(repeats)]
        suffix = "" if mode == "eager" else f"_{mode}"
        figures[f"videoar_l_cfg{suffix}_s_per_video"] = round(statistics.median(runs), 4)
        figures[f"videoar_l_cfg{suffix}_first_run_s"] = round(first, 3)
        log(f"VideoAR-L ({figures['videoar_l_params'] / 1e6:.0f}M) {mode}: {runs}")
    return figures


def gpu_goals(figures: dict, modes: list[str]) -> list[dict]:
    """Issue 15's GPU goals, for each replayed mode measured."""
    goals = []
    for mode in (m for m in modes if m != "eager"):
        step = figures.get(f"ntp_b1_{mode}_step_ms")
        if step is not None:
            goals.append(goal(f"ntp_b1_{mode}_step_ms", step,
                              f"<= {NTP_STEP_GOAL_MS:g} ms (63.5M model, batch 1)",
                              step <= NTP_STEP_GOAL_MS))  # fmt: skip
        b1, b16 = (
            figures.get(f"ntp_b1_{mode}_s_per_video"),
            figures.get(f"ntp_b16_{mode}_s_per_video"),
        )
        if b1 and b16:
            ratio = round(b1 / b16, 3)  # videos/s at 16 over videos/s at 1
            figures[f"ntp_b16_over_b1_{mode}_videos_per_s_ratio"] = ratio
            goals.append(goal(f"ntp_b16_over_b1_{mode}_videos_per_s_ratio", ratio,
                              f">= {BATCH16_GOAL:g}", ratio >= BATCH16_GOAL))  # fmt: skip
        seconds = figures.get(f"videoar_l_cfg_{mode}_s_per_video")
        if seconds is not None:
            goals.append(goal(f"videoar_l_cfg_{mode}_s_per_video", seconds,
                              f"<= {VIDEOAR_L_GOAL_S:g} s (24 x 1536, 17 frames 128², CFG)",
                              seconds <= VIDEOAR_L_GOAL_S))  # fmt: skip
    return goals


def next_scale_goals(figures: dict, frames: int) -> list[dict]:
    """Issue 5's goals for VideoAR's next-scale schedule (steps and CPU wall-clock)."""
    step_ratio = figures["ntp_steps"] / figures["next_scale_steps"]
    figures["next_scale_fewer_steps_than_ntp_ratio"] = round(step_ratio, 2)
    figures["next_scale_tokens_per_video"] = frames * sum(s * s for s in NEXT_SCALE.scales)
    speedup = figures["next_scale_b1_speedup_over_ntp_ratio"]
    return [
        goal("next_scale_fewer_steps_than_ntp_ratio", step_ratio,
             f">= {NEXT_SCALE_STEP_GOAL:g} (steps)", step_ratio >= NEXT_SCALE_STEP_GOAL),
        goal("next_scale_b1_speedup_over_ntp_ratio", speedup,
             f">= {NEXT_SCALE_SPEEDUP_GOAL:g} (CPU wall-clock, batch 1)",
             speedup >= NEXT_SCALE_SPEEDUP_GOAL),
    ]  # fmt: skip


def write_partial(
    per_schedule: dict[str, dict[str, dict]], only: list[str], path: Path, device: str, log
) -> None:
    """Merge a batch-1 run of a few schedules (ntp among them) into the existing results file."""
    previous = json.loads(path.read_text()) if path.exists() else {"figures": {}, "goals": []}
    figures = dict(previous["figures"])
    # The partial run's own ntp keeps a key of its own: the other schedules' ratios were taken
    # against the ntp of the full run.
    figures.update(schedule_figures(per_schedule, 1, ntp_key="ntp_partial_run"))
    figures["partial_run"] = (
        f"batch-1 figures of {', '.join(only)} come from a later run with --only (ratios against "
        "that run's own interleaved ntp); the other figures from the run before it"
    )
    goals = [g for g in previous["goals"] if not g["figure"].startswith("next_scale")]
    if "next_scale" in per_schedule:
        goals += next_scale_goals(figures, GRID[0])
    out = write_results("generate", figures, goals, device=device, path=path)
    log(f"merged {', '.join(only)} into {out}")


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
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--decode",
        help="comma-separated decode modes to time (eager always included); default "
        "eager,static on the CPU, eager,graph on CUDA",
    )
    parser.add_argument("--batches", default="1,16", help="batch sizes (default 1,16)")
    parser.add_argument(
        "--videoar-l",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time a VideoAR-L-sized model (24 x 1536) with CFG; default: on CUDA only",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: 2-layer model, 2 frames, one repeat"
    )
    parser.add_argument("--out", type=Path, help="results file (default bench/results/...)")
    args = parser.parse_args()
    only = sorted({"ntp", *args.only.split(",")}) if args.only else None
    unknown = sorted(set(only or []) - set(SCHEDULE_NAMES))
    if unknown:
        parser.error(
            f"--only {', '.join(unknown)}: unknown; choose from {', '.join(SCHEDULE_NAMES)}"
        )
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    default_modes = "graph" if cuda else "static"
    modes = ["eager", *sorted(set((args.decode or default_modes).split(",")) - {"eager"})]
    bad = sorted(set(modes) - set(DECODE_MODES))
    if bad:
        parser.error(f"--decode {', '.join(bad)}: unknown; choose from {', '.join(DECODE_MODES)}")
    if "graph" in modes and not cuda:
        parser.error("--decode graph captures CUDA graphs: add --device cuda, or time 'static'")
    if "compiled" in modes:  # one compiled step per group size, batch and cache length
        torch._dynamo.config.cache_size_limit = 256
    batches = [int(b) for b in args.batches.split(",")]

    torch.set_num_threads(args.threads)
    repeats_b1, repeats_b16 = (3, 1) if args.quick else (5, 3)
    if args.tiny:
        repeats_b1 = repeats_b16 = 1
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {message}", flush=True)

    grid, config = (TINY_GRID, TINY_MODEL) if args.tiny else (GRID, MODEL)
    run = Run(
        grid=grid,
        device=torch.device(args.device),
        dtype=torch.bfloat16 if cuda else torch.float32,
    )
    if cuda:
        gpu = torch.cuda.get_device_name()
        device_text = f"{gpu}, bf16 weights"
        default_path = RESULTS_DIR / f"generate.{gpu.split()[-1].lower()}.json"
    else:
        device_text = f"cpu ({os.cpu_count()} cores, shared with other jobs while measured)"
        default_path = RESULTS_DIR / "generate.json"
    path = args.out or default_path

    torch.manual_seed(0)
    model = Generator(config).eval().to(run.device, run.dtype)
    log(f"model: {model.num_params() / 1e6:.1f}M parameters, grid {grid}, {args.device}, "
        f"decode {', '.join(modes)}, {args.threads} threads")  # fmt: skip

    # Warm-up: every schedule once on a one-frame grid (allocator, kernels, code paths).
    warm = Run(grid=(1, *grid[1:]), device=run.device, dtype=run.dtype)
    for schedule in (ntp(warm.grid), nbp(warm.grid, (1, 1, 16)), par(warm.grid, 16)):
        time_one(model, schedule, 1, 0, warm)
    for next_scale_config in (NEXT_SCALE, NEXT_SCALE_FULL_CONTEXT):
        time_one(model, next_scale_config, 1, 0, warm)
    log("warm-up done")

    if only:
        per_schedule = measure(model, 1, repeats_b1, log, run, modes, only)
        write_partial(per_schedule, only, path, device_text, log)
        return
    costs = per_step_costs(model, run)
    log(f"per-step costs: {costs}")
    results = {
        batch: measure(model, batch, repeats_b1 if batch == 1 else repeats_b16, log, run, modes)
        for batch in batches
    }

    figures: dict[str, float | int | str] = {
        "model_params": model.num_params(),
        "vocab_size": config.vocab_size,
        "latent_grid": "x".join(map(str, grid)),
        "torch_threads": args.threads,
        "threads_note": "1 thread by default: the 2 cores were shared with other jobs, and 2 "
        "OpenMP threads made runs 4-5x slower and erratic there",
        "sampling": "class-conditional, no CFG, temperature 1, no top-k/top-p, inverse-CDF draw",
        "decode_modes": ", ".join(modes),
        "decode_note": "eager: the model's forward per group; static/graph/compiled: fixed-shape "
        "steps (one per group size) replayed; <mode>_first_run_s includes building, capturing "
        "or compiling them; step_ms = seconds per batch / steps",
        "repeats_batch1": repeats_b1,
        "repeats_batch16": repeats_b16,
        "quick": "batch 1 median of 3 interleaved repeats, batch 16 a single interleaved run"
        if args.quick
        else "batch 1 median of 5 interleaved repeats, batch 16 median of 3",
    }
    if args.tiny:
        figures["tiny"] = "smoke run: a 2-layer 64-wide model on 2 frames, one repeat"
    figures.update(costs)
    for batch, per_schedule in results.items():
        figures.update(schedule_figures(per_schedule, batch))
    if args.videoar_l if args.videoar_l is not None else cuda:
        figures.update(videoar_l(run, modes, repeats_b1, log))

    goals = []
    if "nbp_row_b1_speedup_over_ntp_ratio" in figures:
        speedup = figures["nbp_row_b1_speedup_over_ntp_ratio"]
        target = f">= {SPEEDUP_GOAL_B1:g} (CPU, batch 1)"
        goals.append(
            goal("nbp_row_b1_speedup_over_ntp_ratio", speedup, target, speedup >= SPEEDUP_GOAL_B1)
        )
        goals += next_scale_goals(figures, grid[0])
    if cuda:
        goals += gpu_goals(figures, modes)
    out = write_results("generate", figures, goals, device=device_text, path=path)
    log(f"wrote {out}")
    for line in goals:
        log(f"goal {line['figure']}: {line['value']} ({line['goal']}) met={line['met']}")


if __name__ == "__main__":
    main()
