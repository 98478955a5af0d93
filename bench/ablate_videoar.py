"""VideoAR ablation: previous-frame context, cross-frame error correction (legacy and
Infinity-style) and random frame mask, on and off.

Tiny VideoAR models train on the demo's token shards (synthetic videos -> ingest -> multi-scale
tokenizer -> `arvid tokenize`), same seed, data order and steps for every variant. Reported:
- val bits/token on held-out clips (teacher-forced, no perturbation);
- drift of free-running generation: bits/token of the real last frame when the frames before it
  are the model's own samples (first frame given) minus the same with the real frames before it.
Every variant trains once per seed (--seeds, default 3: the model's initial weights, the data
order and the perturbation noise all follow the seed); each figure is reported per seed, with the
mean and the spread (max - min) over seeds, and the goals compare means against that spread.
Usage: python bench/ablate_videoar.py [--quick] [--tokenizer <folder>] [--variants a,b,...]
       [--seeds 3] [--steps N] [--layers 2]
Variants (see VARIANTS): baseline (pooled previous-frame input, no error correction),
full_context, ec_legacy, ec_infinity (needs token shards that carry the tokenizer's continuous
latent), frame_mask, both (legacy error correction + frame mask).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

# Import from the checkout; keep bench/ itself off the path (its modules must not shadow stdlib ones).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from bench.results_io import goal, write_results  # noqa: E402
from models.generator.config import (  # noqa: E402
    ErrorCorrectionConfig,
    FrameMaskConfig,
    VideoARConfig,
)
from models.generator.loss import bits_per_token  # noqa: E402
from models.generator.transformer import Generator, GeneratorConfig  # noqa: E402
from models.generator.videoar import VideoAR, generate_videoar  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One arm of the ablation: the VideoAR switches that differ between arms."""

    frame_context: Literal["full", "pooled"] = "pooled"
    error_correction: Literal["legacy", "infinity"] | None = None
    frame_mask: float = 0.0


VARIANTS = {
    "baseline": Variant(),
    "full_context": Variant(frame_context="full"),
    "ec_legacy": Variant(error_correction="legacy"),
    "ec_infinity": Variant(error_correction="infinity"),
    "frame_mask": Variant(frame_mask=0.5),
    "both": Variant(error_correction="legacy", frame_mask=0.5),
}
DEFAULT_VARIANTS = ["baseline", "full_context", "ec_legacy", "ec_infinity"]


def build_model(
    tokens_meta: dict,
    num_classes: int,
    variant: Variant,
    seed: int = 0,
    layers: int = 4,
    output_head: Literal["vocab", "digits"] = "digits",
) -> VideoAR:
    """A tiny VideoAR for the token layout in `tokens_meta` (levels, scales, latent size)."""
    torch.manual_seed(seed)  # every variant of one seed starts from the same weights
    levels = list(tokens_meta["levels"])
    generator = Generator(
        GeneratorConfig(
            vocab_size=math.prod(levels),
            output_head=output_head,
            output_levels=levels if output_head == "digits" else None,
            num_classes=num_classes,
            n_layer=layers,
            n_head=4,
            n_embd=128,
            label_dropout=0.1,
        )
    )
    config = VideoARConfig(
        levels=tokens_meta["levels"],
        scales=tokens_meta["scales"],
        scale_gains=tokens_meta.get("scale_gains"),
        upsample_mode=tokens_meta.get("upsample_mode", "bilinear"),
        latent_hw=tuple(tokens_meta["latent_hw"]),
        frame_context=variant.frame_context,
        error_correction=ErrorCorrectionConfig(
            enabled=variant.error_correction is not None,
            mode=variant.error_correction or "infinity",
            max_strength=0.3,
            corrupt_scales=2,  # legacy only; infinity corrupts every scale
        ),
        frame_mask=FrameMaskConfig(prob=variant.frame_mask, drop_prob=0.5),
    )
    return VideoAR(generator, config)


def train(
    model: VideoAR,
    train_set: list[list[torch.Tensor]],
    labels: torch.Tensor,
    steps: int,
    batch: int,
    continuous: list[torch.Tensor] | None = None,
    seed: int = 0,
) -> float:
    """AdamW steps over the training clips in a seeded order; returns seconds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1
    )
    data_order = torch.Generator().manual_seed(1 + 1000 * seed)
    noise = torch.Generator().manual_seed(2 + 1000 * seed)
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        pick = torch.randint(0, len(train_set), (batch,), generator=data_order)
        indices = [
            torch.stack([train_set[i][k] for i in pick.tolist()]) for k in range(model.num_scales)
        ]
        latent = None if continuous is None else torch.stack([continuous[i] for i in pick.tolist()])
        loss = model.loss(indices, labels[pick], continuous=latent, generator=noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return time.perf_counter() - started


@torch.no_grad()
def evaluate(
    model: VideoAR,
    val_set: list[list[torch.Tensor]],
    labels: torch.Tensor,
    seed: int = 0,
    drift_samples: int = 1,
) -> dict[str, float]:
    """Val bits/token, and drift: last-frame bits/token after own samples minus after real
    frames, the own-sample figure averaged over `drift_samples` sampled continuations per clip."""
    model.eval()
    indices = [torch.stack([clip[k] for clip in val_set]) for k in range(model.num_scales)]
    frames = indices[0].shape[1]
    val_bits = bits_per_token(model.loss(indices, labels, perturb=False))
    real_last = bits_per_token(model.loss(indices, labels, perturb=False, from_frame=frames - 1))
    own = []
    for sample in range(drift_samples):
        sampled = generate_videoar(
            model,
            frames - 1,
            labels,
            context=[x[:, :1] for x in indices],
            generator=torch.Generator().manual_seed(3 + 1000 * seed + 100_000 * sample),
        )
        mixed = [
            torch.cat([s, x[:, -1:]], dim=1) for s, x in zip(sampled.indices, indices, strict=True)
        ]
        own.append(bits_per_token(model.loss(mixed, labels, perturb=False, from_frame=frames - 1)))
    own_last = statistics.mean(own)
    return {
        "val_bits_per_token": val_bits,
        "last_frame_bits_after_real_frames": real_last,
        "last_frame_bits_after_own_samples": own_last,
        "drift_bits_per_token": own_last - real_last,
    }


def continuous_latents(clips: list) -> list[torch.Tensor] | None:
    """Each clip's continuous pre-quantization latent (D, t, h, w), float32 as the tokenizer
    made it, when every clip carries one (``continuous``); else None."""
    arrays = [getattr(c, "continuous", None) for c in clips]
    if not arrays or any(a is None for a in arrays):
        return None
    return [torch.from_numpy(a).float() for a in arrays]


def make_token_shards(root: Path, videos: int, tokenizer_ref: str | None) -> tuple[list, dict]:
    """Demo token shards through the real pipeline; returns (clips, token layout)."""
    from models.tokenizer import TokenizerConfig, VideoTokenizer, save_tokenizer
    from tasks.config import load_config
    from tasks.ingest.run import ingest_dataset
    from tasks.ingest.synthetic import make_synthetic_dataset
    from tasks.settings import ArvidConfig
    from tasks.tokenize.format import read_token_shard
    from tasks.tokenize.run import tokenize_dataset

    config = load_config(
        ArvidConfig,
        None,
        [
            f"synthetic_dir={root / 'raw'}",
            f"synthetic.count={videos}",
            "synthetic.frames=33",
            "synthetic.preset=ultrafast",
            f"ingest.source={root / 'raw' / 'labels.jsonl'}",
            f"ingest.output_root={root / 'datasets'}",
            "ingest.progress=false",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_location={root / 'mlartifacts'}",
            f"tokenize.dataset={root / 'datasets' / 'demo'}",
            f"tokenize.tokens_root={root / 'tokens'}",
            "tokenize.progress=false",
            "ray.num_cpus=2",
            "tokenize.latents=true",  # Infinity-style error correction re-quantizes from them
        ],
    )
    make_synthetic_dataset(config.synthetic, config.synthetic_dir)
    ingest_dataset(config.ingest)
    if tokenizer_ref is None:
        # No trained tokenizer given: a fixed random-weight multi-scale tokenizer. Its tokens are
        # a deterministic function of the video, but not a good code of it (stated in the JSON).
        torch.manual_seed(0)
        tok_config = TokenizerConfig(
            base_channels=16,
            channel_multipliers=[1, 1, 2, 2],
            num_res_blocks=1,
            levels=[8, 5, 5, 5],
            scales=[1, 2, 4, 8],
        )
        save_tokenizer(VideoTokenizer(tok_config), root / "tokenizer")
        tokenizer_ref = str(root / "tokenizer")
    config.tokenize.tokenizer = tokenizer_ref
    summary = tokenize_dataset(config)
    import tempfile

    from tasks.registry import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(tokenizer_ref, Path(tmp))
        tok_cfg = json.loads((model.directory / "config.json").read_text())
    clips = []
    for shard in sorted(Path(summary.tokens_uri, "shards").glob("*.tar")):
        clips.extend(read_token_shard(str(shard)))
    shapes = summary.token_shapes
    layout = {
        "levels": tok_cfg["levels"],
        "scales": tok_cfg["scales"],
        "scale_gains": tok_cfg.get("scale_gains"),
        "upsample_mode": tok_cfg.get("upsample_mode", "bilinear"),
        "latent_hw": shapes[-1][1:],
        "tokenizer": tokenizer_ref
        if not tokenizer_ref.startswith(str(root))
        else "random-weight multi-scale tokenizer",
        "tokens_version": summary.tokens_version,
    }
    return clips, layout


def _beyond_spread(figures: dict, better: str, worse: str, metric: str) -> tuple[float, bool]:
    """(mean improvement of `better` over `worse`, whether it exceeds both arms' seed spread)."""
    gain = figures[f"{worse}_{metric}_mean"] - figures[f"{better}_{metric}_mean"]
    spread = max(figures[f"{better}_{metric}_spread"], figures[f"{worse}_{metric}_spread"])
    return gain, gain > spread


def ablation_goals(figures: dict, chosen: list[str]) -> list[dict]:
    """The issue's goals, where both arms ran."""
    goals = []
    if {"baseline", "full_context"} <= set(chosen):
        for metric in ("drift_bits_per_token", "val_bits_per_token"):
            gain, met = _beyond_spread(figures, "full_context", "baseline", metric)
            goals.append(
                goal(f"full previous-frame context vs pooled: lower {metric} (mean gain)", gain,
                     "> 0 and beyond the seeds' spread (max - min) of either arm", met)
            )  # fmt: skip
    if {"baseline", "ec_infinity"} <= set(chosen):
        gain = (
            figures["baseline_drift_bits_per_token_mean"]
            - figures["ec_infinity_drift_bits_per_token_mean"]
        )
        goals.append(
            goal("Infinity-style error correction vs none: lower drift (mean gain, bits/token)",
                 gain, "> 0", gain > 0)
        )  # fmt: skip
    return goals


def main() -> None:
    """Run the ablation and write bench/results/videoar_ablation.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer videos and steps")
    parser.add_argument(
        "--tokenizer",
        help="a registered tokenizer (models:/...) or model folder; default: random weights",
    )
    parser.add_argument("--steps", type=int, help="training steps per variant")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    parser.add_argument(
        "--drift-samples",
        type=int,
        default=4,
        help="sampled continuations per held-out clip that the drift averages over (default 4)",
    )
    parser.add_argument(
        "--output-head",
        choices=["digits", "vocab"],
        default="digits",
        help="one softmax per FSQ digit (default; 39 outputs for 64,000 codes) or one over "
        "the whole vocabulary",
    )
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated arms, from: {', '.join(VARIANTS)} (default: %(default)s)",
    )
    args = parser.parse_args()
    chosen = [name for name in args.variants.split(",") if name]
    unknown = [name for name in chosen if name not in VARIANTS]
    if unknown or not chosen:
        parser.error(f"--variants {args.variants}: choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(1 if args.quick else 2)
    videos, steps = (32, 60) if args.quick else (64, 300)
    steps = args.steps or steps
    with tempfile.TemporaryDirectory(prefix="arvid-ablate-") as tmp:
        clips, layout = make_token_shards(Path(tmp), videos, args.tokenizer)
    classes = sorted({c.metadata["label"] for c in clips})
    label_ids = {name: i for i, name in enumerate(classes)}
    # Hold out every clip of one in eight source videos: no clip of a validation video is trained
    # on. Labels cycle with the video index (8 classes), so the held-out index walks the diagonal
    # (0, 9, 18, ...): one video of each class, not eight of one.
    inputs = sorted({c.metadata["input"] for c in clips})
    held_out = {name for i, name in enumerate(inputs) if i % 8 == (i // 8) % 8}
    as_tensors = [[torch.from_numpy(a.astype("int64")) for a in c.indices] for c in clips]
    latents = continuous_latents(clips)
    needs_latent = [n for n in chosen if VARIANTS[n].error_correction == "infinity"]
    if needs_latent and latents is None:
        sys.exit(
            f"{', '.join(needs_latent)}: Infinity-style error correction re-quantizes from the "
            "tokenizer's continuous latent, which these token shards do not carry "
            "(TokenizedClip.continuous); tokenize with continuous latents, or leave "
            f"{', '.join(needs_latent)} out of --variants"
        )
    labels = torch.tensor([label_ids[c.metadata["label"]] for c in clips])
    train_ids = [i for i, c in enumerate(clips) if c.metadata["input"] not in held_out]
    val_ids = [i for i, c in enumerate(clips) if c.metadata["input"] in held_out]
    figures: dict = {
        "clips_train": len(train_ids),
        "clips_val": len(val_ids),
        "val_classes": sorted({clips[i].metadata["label"] for i in val_ids}),
        "token_layout": f"{layout['levels']} levels, scales {layout['scales']}, latent {layout['latent_hw']}, "
        f"{clips[0].indices[0].shape[0]} latent frames",
        "tokenizer": layout["tokenizer"],
        "steps_per_variant": steps,
        "model": f"{args.layers} layers x 128 wide, 4 heads, output head {args.output_head}",
        "seeds": args.seeds,
        "drift_definition": "bits/token of the real last frame after the model's own sampled frames "
        "(first frame given; mean over --drift-samples samplings) minus after the real frames",
        "drift_samples": args.drift_samples,
    }
    figures["variants"] = "; ".join(
        f"{n}: frame_context {VARIANTS[n].frame_context}, error correction "
        f"{VARIANTS[n].error_correction or 'off'}, frame mask prob {VARIANTS[n].frame_mask}"
        for n in chosen
    )
    per_seed: dict[str, dict[str, list[float]]] = {name: {} for name in chosen}
    for seed in range(args.seeds):
        for name in chosen:
            variant = VARIANTS[name]
            model = build_model(layout, len(classes), variant, seed, args.layers, args.output_head)
            seconds = train(
                model,
                [as_tensors[i] for i in train_ids],
                labels[train_ids],
                steps,
                batch=8,
                continuous=[latents[i] for i in train_ids]
                if variant.error_correction == "infinity"
                else None,
                seed=seed,
            )
            scores = evaluate(
                model, [as_tensors[i] for i in val_ids], labels[val_ids], seed, args.drift_samples
            )
            scores["train_s"] = seconds
            for key, value in scores.items():
                per_seed[name].setdefault(key, []).append(round(value, 4))
            print(f"seed {seed} {name}: {scores} ({seconds:.0f} s)", flush=True)
    for name in chosen:
        for key, values in per_seed[name].items():
            figures[f"{name}_{key}_per_seed"] = values
            figures[f"{name}_{key}_mean"] = round(statistics.mean(values), 4)
            figures[f"{name}_{key}_spread"] = round(max(values) - min(values), 4)
    goals = ablation_goals(figures, chosen)
    path = write_results("videoar_ablation", figures, goals=goals)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
