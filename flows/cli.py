"""The `arvid` command: each subcommand loads the config, runs one job, prints a one-line summary.

With --json the summary is also printed as one JSON object on the last line, for scripts and CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

log = logging.getLogger("arvid")


def _load(args: argparse.Namespace, extra: list[str]) -> Any:
    from tasks.settings import ArvidConfig

    return load_config(ArvidConfig, args.config, extra + list(args.overrides))


def _make_dataset(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from tqdm import tqdm

    from tasks.ingest.synthetic import make_synthetic_dataset

    extra = []
    if args.out:
        extra.append(f"synthetic_dir={args.out}")
    if args.count is not None:
        extra.append(f"synthetic.count={args.count}")
    config = _load(args, extra)
    with tqdm(
        total=config.synthetic.count, unit="video", desc="make-dataset", disable=args.json
    ) as bar:
        result = make_synthetic_dataset(
            config.synthetic,
            config.synthetic_dir,
            on_progress=lambda done, total: bar.update(done - bar.n),
        )
    labels = sorted(set(result.labels))
    summary = {
        "videos": len(result.videos),
        "classes": labels,
        "out_dir": str(result.out_dir),
        "manifest": str(result.manifest_path),
        "seed": config.synthetic.seed,
    }
    line = (
        f"make-dataset: {len(result.videos)} videos of {len(labels)} classes "
        f"({config.synthetic.width}x{config.synthetic.height}, {config.synthetic.frames} frames at "
        f"{config.synthetic.fps:g} fps, seed {config.synthetic.seed}) -> {result.manifest_path}"
    )
    return line, summary


def _ingest_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if getattr(args, "source", None):
        extra.append(f"ingest.source={args.source}")
    if getattr(args, "output", None):
        extra.append(f"ingest.output_root={args.output}")
    if getattr(args, "name", None):
        extra.append(f"ingest.name={args.name}")
    if getattr(args, "json", False):
        extra.append("ingest.progress=false")
    return extra


def _ingest(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.ingest import ingest_flow

    config = _load(args, _ingest_overrides(args))
    summary = ingest_flow(config)
    return summary.line(), summary.model_dump(mode="json")


def _train_tokenizer(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.train_tokenizer import train_tokenizer_flow

    extra = []
    for flag, key in (("dataset", "dataset"), ("steps", "steps"), ("workers", "num_workers")):
        if getattr(args, flag, None) is not None:
            extra.append(f"tokenizer_training.{key}={getattr(args, flag)}")
    summary = train_tokenizer_flow(_load(args, extra))
    return summary.line(), summary.model_dump(mode="json")


def _tokenize(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.tokenize import tokenize_flow

    extra = []
    for flag in ("dataset", "tokenizer", "resolution", "frames"):
        if getattr(args, flag, None) is not None:
            extra.append(f"tokenize.{flag}={getattr(args, flag)}")
    if args.json:
        extra.append("tokenize.progress=false")
    summary = tokenize_flow(_load(args, extra))
    return summary.line(), summary.model_dump(mode="json")


def _pretrain(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.pretrain import pretrain_flow

    extra = []
    for flag, key in (
        ("dataset", "dataset"),
        ("tokenizer", "tokenizer"),
        ("workers", "num_workers"),
    ):
        if getattr(args, flag, None) is not None:
            extra.append(f"pretrain.{key}={getattr(args, flag)}")
    if args.json:
        extra.append("tokenize.progress=false")
    summary = pretrain_flow(_load(args, extra))
    return summary.line(), summary.model_dump(mode="json")


def _promote(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.promote import promote_flow

    if args.rollback and args.candidate:
        raise ValueError("--rollback restores 'previous'; it takes no --candidate")
    extra = [f"promote.candidate={args.candidate}"] if args.candidate else []
    summary = promote_flow(_load(args, extra), rollback=args.rollback)
    return summary.line(), summary.model_dump(mode="json")


def _demo(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The main job as far as it is built: data -> ingest -> tokenizer -> staged pretraining
    (which tokenizes what each stage needs)."""
    plain = argparse.Namespace(**{**vars(args), "out": None, "count": None})
    _, made = _make_dataset(plain)
    ingest_line, ingested = _ingest(args)
    train_line, trained = _train_tokenizer(plain)
    pretrain_line, pretrained = _pretrain(plain)
    pending = ["evaluate", "promote"]
    line = (
        f"demo: {made['videos']} videos made; {ingest_line}; {train_line}; {pretrain_line}; "
        f"not in the demo yet: {', '.join(pending)}"
    )
    return line, {
        "make_dataset": made,
        "ingest": ingested,
        "train_tokenizer": trained,
        "pretrain": pretrained,
        "not_built_yet": pending,
    }


def _stack(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from infra.local_stack import StackError, stack_command

    try:
        return stack_command(args.action, args.dir)
    except StackError as exc:  # a service that would not start: one clear line, exit 2
        raise ValueError(str(exc)) from exc


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], tuple[str, dict[str, Any]]]]] = {
    "make-dataset": (
        "write the synthetic, class-labelled demo videos (real mp4 files)",
        _make_dataset,
    ),
    "ingest": ("ingest videos into versioned webdataset clip shards", _ingest),
    "train-tokenizer": (
        "train the video tokenizer on Ray Train and register it in MLflow",
        _train_tokenizer,
    ),
    "tokenize": ("tokenize a dataset version with a registered tokenizer on Ray", _tokenize),
    "pretrain": (
        "train the generator stage by stage on Ray Train and register it in MLflow",
        _pretrain,
    ),
    "promote": (
        "move the generator's champion alias to a candidate that passes the gates (or roll back)",
        _promote,
    ),
    "demo": ("run the main job on the embedded default config", _demo),
    "stack": ("start, stop or check the local service stack (S3, MLflow, Prefect, Ray)", _stack),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `arvid` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="arvid", description="raw video to trained AR video generators"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--config",
            type=Path,
            default=DEFAULT_CONFIG_PATH,
            help="YAML config (default: configs/demo.yaml)",
        )
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set ingest.fps=4 (repeatable)",
        )
        cmd.add_argument(
            "--json", action="store_true", help="also print the summary as JSON on the last line"
        )
        if name == "make-dataset":
            cmd.add_argument("--out", help="output folder (synthetic_dir)")
            cmd.add_argument("--count", type=int, help="number of videos (synthetic.count)")
        if name == "train-tokenizer":
            cmd.add_argument(
                "--dataset", help="<output_root>/<name>[@version] (tokenizer_training.dataset)"
            )
            cmd.add_argument("--steps", type=int, help="total optimizer steps (resumes if fewer)")
            cmd.add_argument("--workers", type=int, help="Ray Train workers (num_workers)")
        if name == "tokenize":
            cmd.add_argument("--dataset", help="<output_root>/<name>[@version] (tokenize.dataset)")
            cmd.add_argument(
                "--tokenizer", help="models:/name@alias, models:/name/N, runs:/id/path or a folder"
            )
            cmd.add_argument("--resolution", type=int, help="square side in pixels")
            cmd.add_argument("--frames", type=int, help="frames per clip (1 + 4n)")
        if name == "pretrain":
            cmd.add_argument("--dataset", help="<output_root>/<name>[@version] (pretrain.dataset)")
            cmd.add_argument(
                "--tokenizer", help="models:/name@alias, models:/name/N, runs:/id/path or a folder"
            )
            cmd.add_argument("--workers", type=int, help="Ray Train workers (pretrain.num_workers)")
        if name == "promote":
            cmd.add_argument(
                "--candidate", help="models:/<name>/N or models:/<name>@alias (default: newest)"
            )
            cmd.add_argument(
                "--rollback", action="store_true", help="move champion back to previous"
            )
        if name == "stack":
            cmd.add_argument("action", choices=["up", "down", "status"])
            cmd.add_argument("--dir", default=".arvid/stack", help="the stack's folder")
        if name == "ingest":
            cmd.add_argument(
                "--source", help="folder, s3:// prefix, .jsonl/.csv manifest or shard folder"
            )
            cmd.add_argument("--output", help="datasets root (ingest.output_root)")
            cmd.add_argument("--name", help="dataset name (ingest.name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `arvid` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if not args.json else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    # Prefect shows arvid's own log lines inside flow-run logs too.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "arvid")
    # Without a Prefect server, each process starts a temporary one; 20 s (the default) is too
    # short on a busy 2-core machine. Analytics would only try to reach the internet.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _, run = COMMANDS[args.command]
    try:
        line, summary = run(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"arvid {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # storage and other failures: one clear line, details in the log above
        from tasks.storage import StorageError

        if isinstance(exc, StorageError):
            print(f"arvid {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    print(line)
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
