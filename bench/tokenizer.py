"""Tokenizer quality per wall-time budget, against a weightless baseline on the same held-out clips.

Makes the demo's synthetic videos (or `--train-videos` of them) plus held-out ones (`--holdout`
videos from index 48 on, one per motion class, the same whatever the count), ingests them as two
datasets, then for every seed trains two tokenizers through the real pipeline (`train_tokenizer`:
Ray Train with the demo's 2 CPU workers, MLflow, registry), each for a wall-time budget
(`--budget-s`, 600 s by default; `tokenizer_training.max_minutes` stops the run and spreads its lr
schedule over it):
- `multiscale`: the demo config's tokenizer (residual FSQ over scales [1, 2, 4, 8]);
- `fsq`: the same network with single-scale FSQ.
Ray starts once before the first run (a running cluster, as in production), and a 1-step fit warms
Ray Train up; each run's wall time counts its worker start-up, training, final checkpoint and
registration.

On the held-out clips (whole 17x64x64 clips, centre crop, no flip) it measures, per run:
- PSNR / SSIM of decode(quantized) (what the tokens give) and of decode(continuous) (the same
  network without rounding): the gap is the quantizer's loss, the rest is model capacity;
- quantization error (latent MSE in code units), code perplexity, zero-code share, and per scale:
  saturation (digits clamped at the grid's ends), zero-code share, code usage against the scale's
  ceiling (its number of tokens) and the calibrated gain;
- beside them, decode(quantized) PSNR on as many whole training clips ("seen"): a gap to the
  held-out figure says generalising binds, no gap says fitting does;
and once, the weightless thumbnail baseline: each 8x8x(1, then 4)-frame cell of the latent grid
averaged, stored as one of 64,000 RGB colours (40 levels per channel: the 16 bits a token spends)
and upsampled bilinearly in space (held over the cell's frames in time).

A fitted reference beside it, to read the goal against: a linear codec per latent cell, the
principal components of the training clips' cells (one basis for first-frame cells, one for the
4-frame cells) kept unquantized and projected back, with 6 dimensions (the tokenizer's latent
width) and 12. It is an upper bound for any linear code of that width: rounding only loses more.

Goals (issue 16): every seed >= baseline + 3 dB, for each tokenizer; every run within its budget.
Usage: python bench/tokenizer.py [--budget-s 600] [--seeds 3] [--train-videos N] [--set K=V] [--out PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import rearrange  # noqa: E402

from bench.results_io import goal, write_results  # noqa: E402
from models.tokenizer import VideoTokenizer, code_usage, psnr, ssim  # noqa: E402
from models.tokenizer.multiscale import MultiScaleFSQ  # noqa: E402
from tasks.config import load_config  # noqa: E402
from tasks.data.datasets import resolve_dataset  # noqa: E402
from tasks.ingest.run import ingest_dataset  # noqa: E402
from tasks.ingest.synthetic import make_synthetic_dataset  # noqa: E402
from tasks.ray_runtime import ensure_ray  # noqa: E402
from tasks.settings import ArvidConfig  # noqa: E402
from tasks.train.checkpoints import load_checkpoint  # noqa: E402
from tasks.train.precision import bf16_enabled  # noqa: E402
from tasks.train.tokenizer_data import ShardClipDataset  # noqa: E402
from tasks.train.tokenizer_registry import load_tokenizer  # noqa: E402
from tasks.train.tokenizer_trainer import run_tokenizer_training, train_tokenizer  # noqa: E402

# What a run spends after its training loop stops: the last checkpoint, Ray's worker-group
# teardown, rebuilding the model from the checkpoint, logging it to MLflow and registering it.
# The loop's budget is the run's budget less this, so the run as a whole ends inside it.
TAIL_ALLOWANCE_S = 20.0
# The 16 bits a token spends, as RGB: 40 levels per channel (40**3 = 64,000 colours).
THUMBNAIL_LEVELS = 40
# The held-out videos start here (the first 48 are the demo's original set), so that results
# with any number of training videos share their held-out clips.
HELD_OUT_FIRST = 48
# Widths of the fitted linear reference: the tokenizer's latent (6 channels), and twice it.
LINEAR_CODEC_DIMS = (6, 12)
KINDS = {
    "multiscale": [],  # the demo config as it is
    "fsq": ["tokenizer_training.model.scales=null", "tokenizer_training.model.scale_gains=null"],
}


@dataclass(frozen=True)
class Evaluation:
    """Held-out figures of one trained tokenizer."""

    psnr_quantized_db: float
    psnr_continuous_db: float
    ssim_quantized: float
    ssim_continuous: float
    quantization_mse: float
    code_perplexity: float
    zero_code_share: float
    per_scale: dict[str, float]  # "<figure>_scale<k>" -> value


def split_manifest(raw: Path, first: int, holdout: int) -> tuple[Path, Path]:
    """Write train.jsonl / holdout.jsonl beside labels.jsonl: videos `first` .. `first+holdout-1`
    held out, all others trained on (so extra training videos leave the held-out ones as they are:
    a video depends only on the dataset seed and its index)."""
    rows = (raw / "labels.jsonl").read_text().splitlines()
    train, held = raw / "train.jsonl", raw / "holdout.jsonl"
    train.write_text("\n".join(rows[:first] + rows[first + holdout :]) + "\n")
    held.write_text("\n".join(rows[first : first + holdout]) + "\n")
    return train, held


def whole_clips(reference: str, config: ArvidConfig) -> torch.Tensor:
    """Every clip of a dataset whole (all its frames at the training resolution, whatever window
    the training cropped), centre-cropped and unflipped: (N, 3, T, S, S)."""
    data = ShardClipDataset(
        resolve_dataset(reference),
        config.tokenizer_training.resolution,
        config.ingest.clip_frames,
        random_crop=False,
        random_flip=False,
    )
    return torch.stack([clip for _, clip in data.iter_epoch(0)])


def thumbnail_baseline(
    clips: torch.Tensor, temporal_factor: int, spatial_factor: int, levels: int
) -> torch.Tensor:
    """The weightless baseline: cell means on the tokenizer's latent grid (first frame alone, then
    groups of `temporal_factor`), rounded to `levels` per channel, bilinear up in space, held in
    time. (N, 3, T, H, W) in [-1, 1] -> the same shape."""
    first, rest = clips[:, :, :1], clips[:, :, 1:]
    groups = rearrange(rest, "n c (t f) h w -> n c t f h w", f=temporal_factor).mean(dim=3)
    cells = torch.cat([first, groups], dim=2)  # (N, 3, t, H, W): one frame per latent frame
    frames = rearrange(cells, "n c t h w -> (n t) c h w")
    small = F.avg_pool2d(frames, spatial_factor)
    unit = ((small + 1) / 2).clamp(0, 1)
    small = torch.round(unit * (levels - 1)) / (levels - 1) * 2 - 1
    up = F.interpolate(small, size=frames.shape[-2:], mode="bilinear", align_corners=False)
    up = rearrange(up, "(n t) c h w -> n c t h w", n=clips.shape[0])
    held = torch.cat([up[:, :, :1], up[:, :, 1:].repeat_interleave(temporal_factor, dim=2)], 2)
    return held.clamp(-1, 1)


def linear_codec(
    train: torch.Tensor, held: torch.Tensor, temporal_factor: int, spatial_factor: int, dims: int
) -> torch.Tensor:
    """`held` through a per-cell linear code fitted on `train`: each cell of the latent grid
    (first frame alone, then groups of `temporal_factor`) projected onto the first `dims`
    principal components of the training cells and back. (N, 3, T, H, W) -> the same shape."""

    def cells(x: torch.Tensor, frames: int) -> torch.Tensor:
        pattern = "n c (t f) (h a) (w b) -> (n t h w) (c f a b)"
        return rearrange(x, pattern, f=frames, a=spatial_factor, b=spatial_factor)

    def project(fit: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = fit.mean(dim=0)
        basis = torch.linalg.svd(fit - mean, full_matrices=False).Vh[:dims]
        return (x - mean) @ basis.T @ basis + mean

    parts = []
    for sl, frames in ((slice(0, 1), 1), (slice(1, None), temporal_factor)):
        rebuilt = project(cells(train[:, :, sl], frames), cells(held[:, :, sl], frames))
        n, _, t, h, w = held[:, :, sl].shape
        parts.append(
            rearrange(
                rebuilt,
                "(n t h w) (c f a b) -> n c (t f) (h a) (w b)",
                n=n,
                t=t // frames,
                h=h // spatial_factor,
                w=w // spatial_factor,
                f=frames,
                a=spatial_factor,
                b=spatial_factor,
            )
        )
    return torch.cat(parts, dim=2).clamp(-1, 1)


def evaluate(tokenizer: VideoTokenizer, clips: torch.Tensor) -> Evaluation:
    """Held-out quality of decode(quantized) and decode(continuous), and quantizer health."""
    with torch.no_grad():
        encoding = tokenizer.encode(clips)
        quantized = tokenizer.decode_indices(encoding.indices).clamp(-1, 1)
        continuous = tokenizer.decode(encoding.continuous).clamp(-1, 1)
        quantizer = tokenizer.quantizer
        usage = code_usage(encoding.indices, tokenizer.vocab_size, quantizer.zero_index())
        per_scale: dict[str, float] = {}
        if isinstance(quantizer, MultiScaleFSQ):
            stats = quantizer.statistics(encoding.continuous)
            for k in range(quantizer.num_scales):
                per_scale[f"saturation_ratio_scale{k}"] = float(stats.saturation[k])
                per_scale[f"zero_code_ratio_scale{k}"] = float(
                    usage[f"zero_code_fraction/scale{k}"]
                )
                per_scale[f"code_usage_of_ceiling_ratio_scale{k}"] = float(
                    usage[f"code_usage_of_ceiling/scale{k}"]
                )
                per_scale[f"code_perplexity_scale{k}"] = float(usage[f"code_perplexity/scale{k}"])
                per_scale[f"latent_mse_after_scale{k}"] = float(stats.latent_mse[k])
                per_scale[f"gain_scale{k}"] = float(quantizer.gains[k])
        else:
            # Single-scale FSQ bounds with tanh: report the share of digits on the grid's ends
            # (index 0 holds every channel's lowest digit, the last index every highest).
            codes = quantizer.indices_to_codes(encoding.indices)
            ends = quantizer.indices_to_codes(torch.tensor([0, quantizer.codebook_size - 1]))
            edge = (codes == ends[0]) | (codes == ends[1])
            per_scale["edge_digit_ratio"] = float(edge.float().mean())
            per_scale["code_usage_of_ceiling_ratio"] = float(usage["code_usage_of_ceiling"])
    return Evaluation(
        psnr_quantized_db=float(psnr(quantized, clips).mean()),
        psnr_continuous_db=float(psnr(continuous, clips).mean()),
        ssim_quantized=float(ssim(quantized, clips).mean()),
        ssim_continuous=float(ssim(continuous, clips).mean()),
        quantization_mse=float((encoding.quantized - encoding.continuous).pow(2).mean()),
        code_perplexity=float(usage["code_perplexity"]),
        zero_code_share=float(usage["zero_code_fraction"]),
        per_scale=per_scale,
    )


def seen_psnr_db(tokenizer: VideoTokenizer, clips: torch.Tensor) -> float:
    """Mean PSNR of decode(quantized) on `clips` (training clips, whole and unflipped)."""
    with torch.no_grad():
        reconstruction = tokenizer.decode_indices(tokenizer.encode(clips).indices).clamp(-1, 1)
    return float(psnr(reconstruction, clips).mean())


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def prepare_data(root: Path, holdout: int, train_videos: int | None) -> tuple[ArvidConfig, int]:
    """Make and ingest `train_videos` training videos (None: the demo's count) and `holdout`
    held-out ones; the demo config and the number of training videos. The held-out videos are
    those from index HELD_OUT_FIRST on, whatever the count, so results with different training
    sets share their held-out clips."""
    base = load_config(ArvidConfig)
    train = base.synthetic.count if train_videos is None else train_videos
    if train < HELD_OUT_FIRST:
        raise ValueError(
            f"--train-videos {train}: at least {HELD_OUT_FIRST} (the held-out videos start there)"
        )
    synthetic = base.synthetic.model_copy(update={"count": train + holdout})
    make_synthetic_dataset(synthetic, root / "raw")
    train_manifest, holdout_manifest = split_manifest(root / "raw", HELD_OUT_FIRST, holdout)
    for name, manifest in (("train", train_manifest), ("holdout", holdout_manifest)):
        ingest_dataset(
            base.ingest.model_copy(
                update={
                    "source": str(manifest),
                    "output_root": str(root / "datasets"),
                    "name": name,
                    "progress": False,
                }
            )
        )
    return base, train


def run_config(
    root: Path, kind: str, seed: int, budget_s: float, extra: list[str] | None = None
) -> ArvidConfig:
    """The demo config for one bench run: its data, stores, seed and wall-time budget (then
    the `extra` overrides)."""
    minutes = max(budget_s - TAIL_ALLOWANCE_S, 1.0) / 60
    return load_config(
        ArvidConfig,
        None,
        [
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_location={root / 'mlartifacts'}",
            "tracking.experiment=bench-tokenizer",
            f"tokenizer_training.dataset={root / 'datasets' / 'train'}",
            f"tokenizer_training.checkpoint_dir={root / 'checkpoints'}",
            "tokenizer_training.steps=1000000",  # the budget ends the run
            f"tokenizer_training.max_minutes={minutes}",
            "tokenizer_training.checkpoint_every=200",
            "tokenizer_training.sample_every=1000000",  # one sample, at the end
            f"tokenizer_training.seed={seed}",
            f"tokenizer_training.register_alias=bench-{kind}-{seed}",
            "ray.num_cpus=2",
            *KINDS[kind],
            *(extra or []),
        ],
    )


def main() -> None:
    """Run the benchmark and write its results (bench/results/tokenizer.json or --out)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget-s", type=float, default=600.0, help="wall budget of each run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per tokenizer (0, 1, ...)")
    parser.add_argument("--holdout", type=int, default=8, help="held-out videos")
    parser.add_argument("--kinds", default=",".join(KINDS), help="tokenizers to train")
    parser.add_argument(
        "--train-videos", type=int, default=None, help="training videos (default: the demo's)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results file (default: bench/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. tokenizer_training.lr=1e-3 (repeatable)",
    )
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--kinds {unknown}: choose from {sorted(KINDS)}")
    torch.set_num_threads(2)
    figures: dict[str, object] = {"budget_s": args.budget_s, "seeds": args.seeds}
    if args.overrides:
        figures["overrides"] = args.overrides
    goals = []
    with tempfile.TemporaryDirectory(prefix="arvid-bench-tokenizer-") as tmp:
        root = Path(tmp)
        base, train_videos = prepare_data(root, args.holdout, args.train_videos)
        figures["train_videos"] = train_videos
        # Whether the runs trained in bf16 (tokenizer_training.cpu_bf16, "auto" in the demo).
        figures["train_bf16"] = bf16_enabled(
            torch.device("cpu"), False, base.tokenizer_training.cpu_bf16
        )
        clips = whole_clips(str(root / "datasets" / "holdout"), base)
        model = base.tokenizer_training.model
        baseline = thumbnail_baseline(
            clips, model.temporal_factor, model.spatial_factor, THUMBNAIL_LEVELS
        )
        baseline_db = float(psnr(baseline, clips).mean())
        figures.update(
            {
                "held_out_clips": int(clips.shape[0]),
                "held_out_clip_shape": "x".join(str(n) for n in clips.shape[2:]),
                "thumbnail_psnr_db": round(baseline_db, 2),
                "thumbnail_ssim": round(float(ssim(baseline, clips).mean()), 4),
            }
        )
        print(f"thumbnail baseline {baseline_db:.2f} dB on {clips.shape[0]} clips", flush=True)
        train_clips = whole_clips(str(root / "datasets" / "train"), base)
        for dims in LINEAR_CODEC_DIMS:
            linear = linear_codec(
                train_clips, clips, model.temporal_factor, model.spatial_factor, dims
            )
            figures[f"linear_codec_{dims}d_psnr_db"] = round(float(psnr(linear, clips).mean()), 2)
        # As many training clips as held-out ones: their PSNR beside the held-out one shows
        # whether a run is bound by fitting (both low) or by generalising (a gap between them).
        seen = train_clips[: clips.shape[0]].clone()
        del train_clips
        started = time.perf_counter()
        ensure_ray(run_config(root, kinds[0], 0, args.budget_s).ray)
        figures["ray_start_s"] = round(time.perf_counter() - started, 1)
        # Ray Train's first fit pays one-off costs (its controller, imports in fresh workers):
        # a 1-step fit first, so that the first measured run is not charged for them.
        started = time.perf_counter()
        warm_up = [
            "tokenizer_training.steps=1",
            "tokenizer_training.max_minutes=null",
            f"tokenizer_training.checkpoint_dir={root / 'warm-up'}",
        ]
        run_tokenizer_training(run_config(root, kinds[0], 0, args.budget_s, warm_up))
        figures["ray_train_warm_up_s"] = round(time.perf_counter() - started, 1)

        for kind in kinds:
            psnrs = []
            for seed in range(args.seeds):
                config = run_config(root, kind, seed, args.budget_s, args.overrides)
                started = time.perf_counter()
                summary = train_tokenizer(config)
                wall_s = time.perf_counter() - started
                print(summary.line(), f"({wall_s:.0f} s)", flush=True)
                tokenizer = load_tokenizer(summary.reference(), tracking_config=config.tracking)
                result = evaluate(tokenizer, clips)
                prefix = f"{kind}_seed{seed}_"
                figures.update(
                    {
                        prefix + "steps": summary.steps,
                        prefix + "train_wall_s": round(wall_s, 1),
                        prefix + "train_loop_s": summary.train_seconds,
                        prefix + "startup_s": summary.startup_seconds,
                        prefix + "train_clips_per_s": summary.clips_per_s,
                        prefix + "psnr_quantized_db": round(result.psnr_quantized_db, 2),
                        prefix + "psnr_continuous_db": round(result.psnr_continuous_db, 2),
                        prefix + "psnr_seen_db": round(seen_psnr_db(tokenizer, seen), 2),
                        prefix + "ssim_quantized": round(result.ssim_quantized, 4),
                        prefix + "ssim_continuous": round(result.ssim_continuous, 4),
                        prefix + "quantization_mse": round(result.quantization_mse, 6),
                        prefix + "code_perplexity": round(result.code_perplexity, 2),
                        prefix + "zero_code_ratio": round(result.zero_code_share, 4),
                        **{prefix + k: round(v, 4) for k, v in result.per_scale.items()},
                    }
                )
                if config.tokenizer_training.ema_decay:
                    # The same run's last-step weights beside the published average: the
                    # average's gain, measured without a second run's noise.
                    last = load_checkpoint(summary.checkpoint).build_tokenizer(averaged=False)
                    last_step = evaluate(last, clips)
                    figures[prefix + "psnr_quantized_last_step_db"] = round(
                        last_step.psnr_quantized_db, 2
                    )
                psnrs.append(result.psnr_quantized_db)
                goals.append(
                    goal(
                        prefix + "train_wall_s",
                        wall_s,
                        f"<= {args.budget_s:.0f} s (2 CPU cores)",
                        wall_s <= args.budget_s,
                    )
                )
                if seed == 0:
                    batch = clips[:8]
                    with torch.no_grad():
                        indices = tokenizer.encode(batch).indices
                        encode_s = timed(lambda b=batch, t=tokenizer: t.encode(b), repeats=3)
                        decode_s = timed(lambda i=indices, t=tokenizer: t.decode_indices(i), 3)
                    figures[f"{kind}_parameters"] = sum(p.numel() for p in tokenizer.parameters())
                    figures[f"{kind}_encode_clips_per_s"] = round(batch.shape[0] / encode_s, 2)
                    figures[f"{kind}_decode_clips_per_s"] = round(batch.shape[0] / decode_s, 2)
            worst = min(psnrs)
            figures[f"{kind}_psnr_quantized_db_mean"] = round(statistics.mean(psnrs), 2)
            figures[f"{kind}_psnr_over_thumbnail_db_min"] = round(worst - baseline_db, 2)
            goals.append(
                goal(
                    f"{kind}_psnr_over_thumbnail_db_min",
                    worst - baseline_db,
                    ">= 3 dB (every seed >= baseline + 3 dB)",
                    worst >= baseline_db + 3.0,
                )
            )

    figures["speed_threads"] = torch.get_num_threads()
    figures["note"] = "run alone: the 2 workers need both cores; a second job halves their steps"
    path = write_results("tokenizer", figures, goals, path=args.out)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
