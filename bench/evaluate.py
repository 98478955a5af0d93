"""Evaluation speed: Kinetics-400 I3D clips/s at FVD's input size (16 frames, 224x224).

Random inputs in [-1, 1] (the network's cost does not depend on the pixels) go through
`models.eval.fvd.i3d_logits`, range check included, at each batch size, in PyTorch's default
memory layout and in channels_last_3d. One warm-up call per configuration, then the
configurations interleave `--repeats` times (shared machines drift) and each figure is the
median. On the CPU the figures carry wall-clock and process CPU time per clip, and the load
average around the run says how noisy the wall-clock figures are. With --device cuda: the same
on the GPU, plus how far its logits are from the CPU's (TF32 convolutions on and off).
With --demo-folder (a folder `bench/demo.py --keep` ran the demo in): the wall time of the demo's
evaluation (`arvid evaluate` on its generator, every unit computed afresh in a new output folder;
Ray start-up included), as the demo's config sets it (32 real, 32 sampled, 32 predicted clips).
Usage: python bench/evaluate.py [--device cpu|cuda] [--repeats 3] [--batch-sizes 1 4]
       [--demo-folder DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.results_io import cpu_device, write_results  # noqa: E402
from models.eval.fvd import i3d_logits  # noqa: E402
from models.eval.i3d import InceptionI3d  # noqa: E402
from tasks.evaluate.i3d_weights import load_i3d  # noqa: E402

FRAMES, SIDE = 16, 224
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(model: InceptionI3d, video: torch.Tensor, device: str) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one I3D call."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    i3d_logits(model, video)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def throughput(
    model: InceptionI3d, device: str, batch_sizes: list[int], repeats: int
) -> dict[str, float]:
    """clips/s (and CPU s per clip) per batch size and layout: warm-up, interleaved runs, medians."""
    generator = torch.Generator().manual_seed(0)
    configs = [(b, layout) for b in batch_sizes for layout in LAYOUTS]
    videos = {
        (b, layout): (torch.rand(b, 3, FRAMES, SIDE, SIDE, generator=generator) * 2 - 1)
        .to(device)
        .contiguous(memory_format=LAYOUTS[layout])
        for b, layout in configs
    }
    models = {
        layout: model.to(memory_format=fmt) if layout == "contiguous" else _copy(model, fmt)
        for layout, fmt in LAYOUTS.items()
    }
    for b, layout in configs:  # warm-up: allocator, kernels, caches
        time_call(models[layout], videos[(b, layout)], device)
    walls: dict[tuple[int, str], list[float]] = {c: [] for c in configs}
    cpus: dict[tuple[int, str], list[float]] = {c: [] for c in configs}
    for _ in range(repeats):
        for b, layout in configs:
            wall, cpu = time_call(models[layout], videos[(b, layout)], device)
            walls[(b, layout)].append(wall / b)
            cpus[(b, layout)].append(cpu / b)
    figures: dict[str, float] = {}
    for b, layout in configs:
        key = f"batch{b}_{layout}"
        figures[f"{key}_clips_per_s"] = round(1.0 / statistics.median(walls[(b, layout)]), 3)
        if device == "cpu":
            figures[f"{key}_cpu_s_per_clip"] = round(statistics.median(cpus[(b, layout)]), 3)
    for b in batch_sizes:  # same run, interleaved: steadier than either absolute figure
        contiguous, channels_last = walls[(b, "contiguous")], walls[(b, "channels_last_3d")]
        figures[f"batch{b}_channels_last_3d_speedup_ratio"] = round(
            statistics.median(contiguous) / statistics.median(channels_last), 3
        )
    return figures


def _copy(model: InceptionI3d, memory_format: torch.memory_format) -> InceptionI3d:
    clone = InceptionI3d().to(next(model.parameters()).device)
    clone.load_state_dict(model.state_dict())
    return clone.eval().to(memory_format=memory_format)


def gpu_vs_cpu(model: InceptionI3d) -> dict[str, float]:
    """Largest logit difference of the GPU (TF32 convolutions on, then off) from the CPU."""
    video = torch.rand(2, 3, FRAMES, SIDE, SIDE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference = i3d_logits(_copy(model, torch.contiguous_format).cpu(), video)
    figures = {}
    default_tf32 = torch.backends.cudnn.allow_tf32
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        logits = i3d_logits(model, video.cuda()).cpu()
        key = f"cuda_vs_cpu_max_abs_diff_logits_tf32_{'on' if tf32 else 'off'}"
        figures[key] = float((logits - reference).abs().max())
    torch.backends.cudnn.allow_tf32 = default_tf32
    return figures


def demo_evaluation(folder: Path) -> dict[str, float | str]:
    """Wall seconds of evaluating the demo's newest generator from scratch, in `folder`."""
    import tempfile

    from tasks.config import DEFAULT_CONFIG_PATH, load_config
    from tasks.evaluate.run import evaluate
    from tasks.settings import ArvidConfig

    os.chdir(folder)  # the demo config's paths are relative to where the demo ran
    out = tempfile.mkdtemp(prefix="arvid-eval-bench-")
    config = load_config(ArvidConfig, DEFAULT_CONFIG_PATH, [f"evaluate.output_root={out}"])
    started = time.perf_counter()
    summary = evaluate(config)
    seconds = time.perf_counter() - started
    if summary.units_done_before:
        raise SystemExit(
            f"{out}: expected a fresh evaluation, {summary.units_done_before} units done"
        )
    return {
        "demo_evaluation_wall_s": round(seconds, 1),
        "demo_evaluation_model": summary.model,
        "demo_evaluation_units": summary.units,
        "demo_evaluation_videos": (
            f"{summary.real_videos} real, {summary.generated_videos} sampled, "
            f"{summary.real_videos} predicted"
        ),
        "demo_evaluation_seconds_per_sampled_video": round(summary.metrics["seconds_per_video"], 4),
    }


def main() -> None:
    """Measure I3D throughput on the chosen device and write bench/results/evaluate[.<gpu>].json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default: 1 4 (cuda: 1 4 16 64)")
    parser.add_argument("--demo-folder", type=Path, help="also time the demo's evaluation there")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    batch_sizes = args.batch_sizes or ([1, 4] if args.device == "cpu" else [1, 4, 16, 64])

    model = load_i3d().to(args.device)
    load_before = os.getloadavg()[0]
    figures: dict[str, float | str] = {"frames": FRAMES, "resolution_px": SIDE}
    figures.update(throughput(model, args.device, batch_sizes, args.repeats))
    if args.device == "cuda":
        figures.update(gpu_vs_cpu(model))
        name = torch.cuda.get_device_name()
        write_results("evaluate", figures, [], device=name, suffix=name.split()[-1].lower())
        return
    load_after = os.getloadavg()[0]
    if args.demo_folder is not None:
        figures.update(demo_evaluation(args.demo_folder.resolve()))
    figures["load_avg_1min_before"] = round(load_before, 2)
    figures["load_avg_1min_after"] = round(load_after, 2)
    figures["timing_note"] = (
        f"{os.cpu_count()} CPU cores shared with other jobs: clips_per_s (wall clock) is noisy "
        "whenever the load average exceeds the core count; cpu_s_per_clip is steadier"
    )
    path = write_results("evaluate", figures, [], device=cpu_device())
    print(path.read_text())


if __name__ == "__main__":
    main()
