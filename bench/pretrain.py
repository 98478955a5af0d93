"""Pretraining: tokens/s with 1 and 2 Ray Train workers, and whether the demo stages learn.

1. Data as the demo makes it (configs/demo.yaml under --root): synthetic videos, ingestion, the
   demo tokenizer trained and registered. Every step is idempotent, so a re-run reuses them.
2. Learning: the demo's stages (`pretrain` with the demo config), then held-out bits/token of the
   last stage against two weightless baselines fitted on the same training shards and scored on
   the same held-out shards (tasks/pretrain/baselines.py). Goal: ≤ 0.9× the better baseline.
   The same stages are trained again in this process with and without the copy head
   (models/generator/copy_head.py), so the head's share of the result is on record.
3. Throughput: the last stage's tokens, the demo model, the same per-worker batch, trained for
   --steps steps on 1 and on 2 Ray workers (DDP over gloo), alternating, twice each; tokens/s
   counts from the first to the last step of rank 0 (Ray start-up excluded); medians.
Usage: python bench/pretrain.py [--quick] [--root .arvid/bench-pretrain]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from bench.results_io import goal, write_results  # noqa: E402
from tasks.config import load_config  # noqa: E402
from tasks.ingest.run import ingest_dataset  # noqa: E402
from tasks.ingest.synthetic import make_synthetic_dataset  # noqa: E402
from tasks.pretrain.baselines import baseline_report  # noqa: E402
from tasks.pretrain.driver import fit_stage  # noqa: E402
from tasks.pretrain.loop import StageSpec, TrainOptions  # noqa: E402
from tasks.pretrain.run import pretrain  # noqa: E402
from tasks.pretrain.tokens import class_names, load_token_clips, read_token_dataset  # noqa: E402
from tasks.settings import ArvidConfig  # noqa: E402
from tasks.train.events import ignore_event  # noqa: E402
from tasks.train.ray_driver import WorkerGroup  # noqa: E402
from tasks.train.tokenizer_trainer import train_tokenizer  # noqa: E402


def demo_config(root: Path, quick: bool, extra: tuple[str, ...] = ()) -> ArvidConfig:
    """configs/demo.yaml with every path under `root` (and shorter runs with --quick), plus
    `extra` overrides."""
    overrides = [
        f"synthetic_dir={root / 'raw'}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_location={root / 'mlartifacts'}",
        f"ingest.source={root / 'raw' / 'labels.jsonl'}",
        f"ingest.output_root={root / 'datasets'}",
        "ingest.progress=false",
        f"tokenizer_training.checkpoint_dir={root / 'checkpoints' / 'tokenizer'}",
        f"tokenize.tokens_root={root / 'tokens'}",
        "tokenize.progress=false",
        f"pretrain.checkpoint_dir={root / 'checkpoints' / 'generator'}",
    ]
    if quick:
        overrides += ["tokenizer_training.steps=60", "synthetic.count=24"]
    return load_config(ArvidConfig, overrides=[*overrides, *extra])


def prepare_data(config: ArvidConfig) -> None:
    """Videos, ingestion and a registered tokenizer, as `make demo` makes them."""
    make_synthetic_dataset(config.synthetic, config.synthetic_dir)
    ingest_dataset(config.ingest, config.storage)
    train_tokenizer(config)


def throughput(config: ArvidConfig, spec: StageSpec, workers: int, steps: int) -> float:
    """tokens/s of `steps` steps of the stage on `workers` Ray workers (same batch per worker)."""
    per_worker = spec.stage.batch_size
    stage = spec.stage.model_copy(update={"steps": steps, "batch_size": per_worker * workers})
    run_dir = f"{spec.run_dir}-x{workers}-{time.time_ns()}"
    trial = StageSpec(**{**spec.__dict__, "stage": stage, "run_dir": run_dir, "val": None})
    result = fit_stage(trial, WorkerGroup(workers), config.ray, ignore_event)
    return result.tokens_per_s


def in_process_val_bits(
    config: ArvidConfig,
    summary,
    tokenizer,
    classes: list[str],
    copy_previous: bool,
    run_root: Path,
) -> float:
    """Held-out bits/token after the demo stages trained in this process (no Ray, one worker,
    the same global batch), with or without the copy head: the head's share of the result."""
    from tasks.pretrain.loop import run_stage
    from tasks.pretrain.run import generator_config, stage_spec

    model = config.pretrain.model.model_copy(update={"copy_previous": copy_previous})
    config = config.model_copy(
        update={"pretrain": config.pretrain.model_copy(update={"model": model})}
    )
    run_root = run_root / f"copy-{copy_previous}-{time.time_ns()}"
    model_config = generator_config(config.pretrain, tokenizer.config.levels, len(classes))
    init_from, val_bits = None, float("nan")
    for index, (stage, done) in enumerate(zip(config.pretrain.stages, summary.stages, strict=True)):
        spec = stage_spec(
            config, index, stage, done.tokens_uri, model_config, tokenizer.config, classes,
            str(run_root), init_from,
        )  # fmt: skip
        result = run_stage(spec)
        init_from, val_bits = result.final_checkpoint, result.val_bits
    return val_bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer videos and tokenizer steps")
    parser.add_argument("--root", type=Path, default=Path(".arvid/bench-pretrain"))
    parser.add_argument("--steps", type=int, default=40, help="steps per throughput trial")
    args = parser.parse_args()
    root = args.root.resolve()
    config = demo_config(root, args.quick)

    started = time.perf_counter()
    prepare_data(config)
    data_seconds = time.perf_counter() - started
    started = time.perf_counter()
    summary = pretrain(config)
    pretrain_seconds = time.perf_counter() - started
    last = summary.stages[-1]

    tokens = read_token_dataset(last.tokens_uri)
    train_shards, val_shards = tokens.split(config.pretrain.val_shards)
    classes = class_names(tokens.rows)
    train = load_token_clips(tokens, train_shards, classes, len(classes))
    val = load_token_clips(tokens, val_shards, classes, len(classes))
    from models.generator.persist import read_generator_config
    from tasks.registry import resolve_model

    model_dir = resolve_model(summary.reference(), root / "model", kind="generator").directory
    vocab = read_generator_config(model_dir)["generator"]["vocab_size"]
    baselines = baseline_report(train, val, vocab)
    ratio = last.val_bits / baselines["best_baseline_bits_per_token"]

    # Throughput on the last stage's tokens with the demo model, from scratch each time.
    from models.generator.config import GeneratorConfig
    from tasks.pretrain.run import videoar_config
    from tasks.train.tokenizer_registry import load_tokenizer

    tokenizer = load_tokenizer(summary.tokenizer, tracking_config=config.tracking)
    stage = config.pretrain.stages[-1].model_copy(update={"batch_size": 8})
    spec = StageSpec(
        stage=stage,
        model=GeneratorConfig.model_validate(read_generator_config(model_dir)["generator"]),
        videoar=videoar_config(tokenizer.config, stage) if stage.schedule == "next_scale" else None,
        train=train,
        val=None,
        run_dir=str(root / "throughput"),
        init_from=None,
        seed=0,
        options=TrainOptions(checkpoint_every=10**9, log_every=10**9),
        storage=config.storage,
    )
    # The copy head's share: the same stages in this process, with and without it.
    in_process = {
        flag: in_process_val_bits(config, summary, tokenizer, classes, flag, root / "copy-ablation")
        for flag in (True, False)
    }
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(2):
        for workers in (1, 2):
            rates[workers].append(throughput(config, spec, workers, args.steps))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])

    figures = {
        "data_prep_s": round(data_seconds, 1),
        "pretrain_demo_stages_s": round(pretrain_seconds, 1),
        "pretrain_stages_skipped": all(s.skipped for s in summary.stages),  # a re-run: reused
        "stages": [s.name for s in summary.stages],
        "stage_steps": [s.steps for s in config.pretrain.stages],
        "model": f"{config.pretrain.model.n_layer} layers x {config.pretrain.model.n_embd} wide, "
        f"output head {config.pretrain.model.output_head}, "
        f"copy head {config.pretrain.model.copy_previous}",
        "final_val_bits_per_token": round(last.val_bits, 4),
        "final_train_bits_per_token": round(last.train_bits, 4),
        **{k: round(v, 4) for k, v in baselines.items()},
        "val_over_best_baseline_ratio": round(ratio, 4),
        # In-process runs of the same stages (1 worker): the copy head's share of the result.
        "in_process_val_bits_copy_head": round(in_process[True], 4),
        "in_process_val_bits_no_copy_head": round(in_process[False], 4),
        "in_process_no_copy_over_best_baseline_ratio": round(
            in_process[False] / baselines["best_baseline_bits_per_token"], 4
        ),
        "train_clips": len(train),
        "val_clips": len(val),
        "tokens_per_clip": train.tokens_per_clip,
        "tokens_per_s_1_worker": round(one, 1),
        "tokens_per_s_2_workers": round(two, 1),
        "tokens_per_s_trials_1_worker": [round(r, 1) for r in rates[1]],
        "tokens_per_s_trials_2_workers": [round(r, 1) for r in rates[2]],
        "two_worker_speedup_ratio": round(two / one, 3),
        "gpu_measured": False,
    }
    goals = [
        goal("two_worker_speedup_ratio", two / one, ">= 1.5 (CPU, tiny model)", two / one >= 1.5),
        goal("val_over_best_baseline_ratio", ratio, "<= 0.9", ratio <= 0.9),
    ]
    path = write_results("pretrain", figures, goals)
    print(
        f"pretrain bench: val {last.val_bits:.3f} bits/token vs best baseline "
        f"{baselines['best_baseline_bits_per_token']:.3f} (x{ratio:.3f}); tokens/s 1 worker "
        f"{one:.0f}, 2 workers {two:.0f} (x{two / one:.2f}) -> {path}"
    )


if __name__ == "__main__":
    main()
