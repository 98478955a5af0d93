"""FAR: context tokens and step time with long short-term context, and frame prediction PSNR.

1. Context length: a bench-sized FAR on the demo tokenizer's latent layout (8×8 cells of 6
   channels per latent frame) with long short-term context (the last --short-window frames at full
   resolution, older ones patchified 4× per side: 4 tokens instead of 64) and with full context,
   at 16, 32 and 64 latent frames: tokens per training sequence and the median time of one
   training step (forward, backward, AdamW), the two kinds interleaved. Goals (issue 13): ≥ 4×
   fewer context tokens at 64 frames; step time growing slower than linearly in frames (64 vs 16
   frames: under 4×).
2. Frame prediction: the demo data and tokenizer as bench/pretrain.py makes them (idempotent:
   shared with it under --root), tokenized by the tokenization flow with the tokenizer's continuous
   latents (tokenize.latents); FAR trained on the training shards' latents for at most
   --train-minutes (a time budget checked as it runs); then on the held-out shard, given 1 latent
   frame of context (the clip's first video frame), the other latent frames (16 video frames) are
   sampled frame by frame (--ode-steps Euler steps each) and decoded by the tokenizer. PSNR
   against the real frames, beside the baseline of repeating the last context frame (the decoded
   context frame). Goal: the sampled frames above it. Also reported: the one-step prediction
   (the model's conditional mean, the MSE-best guess) and the tokenizer's own reconstruction.
Usage: python bench/far.py [--quick] [--root .arvid/bench-pretrain] [--out PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.pretrain import demo_config, prepare_data  # noqa: E402
from bench.results_io import goal, write_results  # noqa: E402
from models.generator.config import FARConfig, GeneratorConfig  # noqa: E402
from models.generator.far import FAR  # noqa: E402
from models.generator.far_sampling import predict_frames  # noqa: E402
from models.generator.transformer import Generator  # noqa: E402
from models.tokenizer import psnr  # noqa: E402
from tasks import storage  # noqa: E402
from tasks.data.clips import clip_tensor, iter_shard  # noqa: E402
from tasks.data.datasets import resolve_dataset  # noqa: E402
from tasks.data.video import decode_clip  # noqa: E402
from tasks.pretrain.tokens import (  # noqa: E402
    TokenClips,
    class_names,
    load_token_clips,
    read_token_dataset,
)
from tasks.settings import ArvidConfig  # noqa: E402
from tasks.tokenize.run import tokenize_dataset  # noqa: E402
from tasks.train.tokenizer_registry import load_tokenizer  # noqa: E402

FRAME_COUNTS = (16, 32, 64)


def far_model(config: FARConfig, n_layer: int, n_embd: int, num_classes: int = 1) -> FAR:
    """A FAR around a fresh generator (n_embd / 32 heads; no token vocabulary: latents in)."""
    generator = Generator(
        GeneratorConfig(
            vocab_size=1, num_classes=num_classes, n_layer=n_layer, n_head=max(1, n_embd // 32),
            n_embd=n_embd, label_dropout=0.1,
        )
    )  # fmt: skip
    return FAR(generator, config)


def context_scaling(args: argparse.Namespace) -> tuple[dict, list]:
    """Tokens and step time at 16/32/64 latent frames, long short-term against full context."""
    layout = {"latent_dim": 6, "latent_hw": (8, 8), "long_patch": 4}
    kinds = {
        "long_short": FARConfig(**layout, short_window=args.short_window),
        "full": FARConfig(**layout),
    }
    torch.manual_seed(0)
    models = {k: far_model(c, args.layers, args.width) for k, c in kinds.items()}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    frames = FRAME_COUNTS if not args.quick else (4, 8, 16)

    def step(kind: str, num_frames: int) -> float:
        latents = torch.randn(args.batch, 6, num_frames, 8, 8)
        started = time.perf_counter()
        loss = models[kind](latents)
        optimizers[kind].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[kind].step()
        return time.perf_counter() - started

    times: dict[tuple[str, int], list[float]] = {}
    for num_frames in frames:  # warm-up: layouts built, allocator settled
        for kind in kinds:
            step(kind, num_frames)
    for _ in range(args.repeats):  # A and B interleaved, every length in every round
        for num_frames in frames:
            for kind in kinds:
                times.setdefault((kind, num_frames), []).append(step(kind, num_frames))
    figures: dict = {
        "context_model": f"{args.layers} x {args.width}, batch {args.batch}, latent 6x8x8 per "
        f"frame, short_window {args.short_window}, long_patch 4",
    }
    for num_frames in frames:
        for kind, config in kinds.items():
            figures[f"context_tokens_{kind}_{num_frames}f"] = config.context_tokens(num_frames)
            figures[f"step_s_{kind}_{num_frames}f"] = round(
                statistics.median(times[(kind, num_frames)]), 4
            )
    short, long = frames[0], frames[-1]
    token_ratio = kinds["full"].context_tokens(long) / kinds["long_short"].context_tokens(long)
    growth = figures[f"step_s_long_short_{long}f"] / figures[f"step_s_long_short_{short}f"]
    full_growth = figures[f"step_s_full_{long}f"] / figures[f"step_s_full_{short}f"]
    figures[f"full_over_long_short_tokens_{long}f_ratio"] = round(token_ratio, 3)
    figures[f"step_time_growth_long_short_{short}f_to_{long}f_ratio"] = round(growth, 3)
    figures[f"step_time_growth_full_{short}f_to_{long}f_ratio"] = round(full_growth, 3)
    linear = long / short
    goals = [
        goal(f"full_over_long_short_tokens_{long}f_ratio", token_ratio, ">= 4", token_ratio >= 4),
        goal(
            f"step_time_growth_long_short_{short}f_to_{long}f_ratio",
            growth,
            f"< {linear:g} (slower than linear in frames)",
            growth < linear,
        ),
    ]
    return figures, goals


def latent_tokens(config: ArvidConfig) -> tuple[TokenClips, TokenClips, list[str], str]:
    """Tokenize the demo dataset with continuous latents (the flow's idempotent path) and load
    the training and held-out shards: (train, held out, classes, dataset reference)."""
    dataset = resolve_dataset(
        storage.absolute(storage.join(config.ingest.output_root, config.ingest.name))
    )
    reference = f"{dataset.root}@{dataset.version}"
    tokenize = config.tokenize.model_copy(
        update={"dataset": reference, "resolution": 64, "frames": 17, "latents": True}
    )
    summary = tokenize_dataset(config.model_copy(update={"tokenize": tokenize}))
    tokens = read_token_dataset(summary.tokens_uri)
    train_shards, val_shards = tokens.split(config.pretrain.val_shards)
    classes = class_names(tokens.rows)
    train = load_token_clips(tokens, train_shards, classes, len(classes))
    val = load_token_clips(tokens, val_shards, classes, len(classes))
    if train.continuous is None or val.continuous is None:
        raise RuntimeError(f"{summary.tokens_uri}: tokenized without latents")
    return train, val, classes, reference


def real_clips(reference: str, keys: list[str], resolution: int, frames: int) -> torch.Tensor:
    """The held-out clips' real frames, shaped as tokenization shaped them: (N, 3, T, S, S)."""
    dataset = resolve_dataset(reference)
    wanted, found = set(keys), {}
    for shard in dataset.rows_by_shard():
        for metadata, mp4 in iter_shard(dataset.shard_uri(shard)):
            if metadata["key"] in wanted:
                found[metadata["key"]] = clip_tensor(decode_clip(mp4), resolution, frames)
    missing = wanted - found.keys()
    if missing:
        raise RuntimeError(f"{reference}: clips {sorted(missing)[:3]} not in its shards")
    return torch.stack([found[k] for k in keys])


def train_far(
    model: FAR, train: TokenClips, budget_s: float, batch: int, lr: float
) -> tuple[int, float, float]:
    """Train on the training latents until the time budget is spent (checked every step):
    (steps, seconds, mean loss of the last 50 steps)."""
    latents = torch.from_numpy(train.continuous)
    labels = torch.from_numpy(train.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(0)
    model.train()
    started, step, recent = time.perf_counter(), 0, []
    warmup = 100
    while time.perf_counter() - started < budget_s:
        elapsed = (time.perf_counter() - started) / budget_s
        scale = min(1.0, (step + 1) / warmup) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * elapsed))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        rows = rng.choice(len(latents), size=batch, replace=len(latents) < batch)
        loss = model(latents[rows], labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [float(loss.detach())])[-50:]
        step += 1
    return step, time.perf_counter() - started, statistics.mean(recent) if recent else math.nan


def frame_prediction(args: argparse.Namespace, root: Path) -> tuple[dict, list]:
    """Train FAR on the demo latents within the budget; PSNR of predicted frames vs baseline."""
    extra = () if args.videos is None else (f"synthetic.count={args.videos}",)
    config = demo_config(root, args.quick, extra)
    started = time.perf_counter()
    prepare_data(config)
    train, val, classes, reference = latent_tokens(config)
    data_seconds = time.perf_counter() - started
    _, D, T, H, W = train.continuous.shape
    scale = float(1.0 / train.continuous.std())
    far = FARConfig(
        latent_dim=D, latent_hw=(H, W), long_patch=args.long_patch,
        short_window=args.predict_window, latent_scale=scale,
    )  # fmt: skip
    torch.manual_seed(0)
    model = far_model(far, args.layers, args.width, num_classes=len(classes))
    budget = args.train_minutes * 60
    steps, seconds, train_loss = train_far(model, train, budget, args.train_batch, args.lr)

    tokenizer = load_tokenizer(config.tokenize.tokenizer, tracking_config=config.tracking)
    real = real_clips(reference, val.keys, 64, 17)  # (N, 3, 17, 64, 64) in [-1, 1]
    context = torch.from_numpy(val.continuous[:, :, :1])
    labels = torch.from_numpy(val.labels)
    model.eval()
    with torch.no_grad():
        predicted = predict_frames(
            model, context, T - 1, labels, ode_steps=args.ode_steps,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        video = tokenizer.decode(torch.cat([context, predicted], dim=2)).clamp(-1, 1)
        # One Euler step from pure noise lands on E[x0 | context]: the conditional mean, the
        # MSE-best guess (a sample, above, is sharper and scores lower in PSNR).
        mean = predict_frames(
            model, context, T - 1, labels, ode_steps=1, generator=torch.Generator().manual_seed(0)
        )
        mean_video = tokenizer.decode(torch.cat([context, mean], dim=2)).clamp(-1, 1)
        first = tokenizer.decode(context).clamp(-1, 1)  # (N, 3, 1, 64, 64): the context frame
        ceiling = tokenizer.decode(torch.from_numpy(val.continuous)).clamp(-1, 1)
    later = slice(1, None)  # the 16 frames after the context frame
    target = real[:, :, later]
    repeat = first.expand_as(target)
    model_psnr = float(psnr(video[:, :, later], target).mean())
    mean_psnr = float(psnr(mean_video[:, :, later], target).mean())
    repeat_psnr = float(psnr(repeat, target).mean())
    real_repeat_psnr = float(psnr(real[:, :, :1].expand_as(target), target).mean())
    ceiling_psnr = float(psnr(ceiling[:, :, later], target).mean())
    figures = {
        "prediction_model": f"{args.layers} x {args.width}, short_window {args.predict_window}, "
        f"{args.ode_steps} Euler steps per frame, labels given, no guidance",
        "demo_videos": config.synthetic.count,
        "data_prep_s": round(data_seconds, 1),
        "train_steps": steps,
        "train_s": round(seconds, 1),
        "train_flow_mse_last50": round(train_loss, 4),
        "latent_scale": round(scale, 4),
        "train_clips": len(train),
        "held_out_clips": len(val),
        "context_latent_frames": 1,
        "predicted_latent_frames": T - 1,
        "predicted_psnr_db": round(model_psnr, 3),
        "predicted_one_step_mean_psnr_db": round(mean_psnr, 3),
        "repeat_last_context_frame_psnr_db": round(repeat_psnr, 3),
        "repeat_real_first_frame_psnr_db": round(real_repeat_psnr, 3),
        "tokenizer_reconstruction_psnr_db": round(ceiling_psnr, 3),
    }
    goals = [
        goal(
            "predicted_psnr_db",
            model_psnr,
            f"> repeat-last-frame baseline ({repeat_psnr:.2f} dB)",
            model_psnr > repeat_psnr,
        )
    ]
    return figures, goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run")
    parser.add_argument("--root", type=Path, default=Path(".arvid/bench-pretrain"))
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default: bench/results/far.json)"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2, help="clips per timed step")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per length and kind")
    parser.add_argument("--short-window", type=int, default=4)
    parser.add_argument("--train-minutes", type=float, default=12.0)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--predict-window", type=int, default=None)
    parser.add_argument("--long-patch", type=int, default=4)
    parser.add_argument("--ode-steps", type=int, default=10)
    parser.add_argument(
        "--videos",
        type=int,
        default=None,
        help="synthetic demo videos (default: the demo's count); give a --root of their own",
    )
    parser.add_argument("--skip-prediction", action="store_true", help="only the context part")
    parser.add_argument("--skip-context", action="store_true", help="only the prediction part")
    args = parser.parse_args()
    if args.train_minutes > 15:
        parser.error("--train-minutes: the issue allows a CPU training run of at most 15 minutes")
    if args.quick:
        args.layers, args.width, args.repeats, args.ode_steps = 2, 32, 1, 2
        args.train_minutes = 1 / 3

    figures, goals = {}, []
    if not args.skip_context:
        figures, goals = context_scaling(args)
        print({k: v for k, v in figures.items() if k.startswith(("context_tokens", "step_s"))})
    if not args.skip_prediction:
        more, more_goals = frame_prediction(args, args.root.resolve())
        figures.update(more)
        goals += more_goals
    figures["gpu_measured"] = False
    path = write_results("far", figures, goals, path=args.out)
    for g in goals:
        print(f"{g['figure']}: {g['value']} (goal {g['goal']}, met {g['met']})")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
