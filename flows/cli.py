"""The `arvid` command: each subcommand loads the config, runs one job, prints a one-line summary.

With --json the summary is also printed as one JSON object on the last line, for scripts and CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.deployments import deployment_names
from tasks import preflight
from tasks.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from tasks.settings import ArvidConfig
from tasks.storage import StorageError

log = logging.getLogger("arvid")


def _load(args: argparse.Namespace, extra: list[str]) -> ArvidConfig:
    return load_config(ArvidConfig, args.config, extra + list(args.overrides))


def _make_dataset_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.out:
        extra.append(f"synthetic_dir={args.out}")
    if args.count is not None:
        extra.append(f"synthetic.count={args.count}")
    return extra


def _make_dataset(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from tqdm import tqdm

    from tasks.ingest.synthetic import make_synthetic_dataset

    config = _load(args, _make_dataset_overrides(args))
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


def _train_tokenizer_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    for flag, key in (("dataset", "dataset"), ("steps", "steps"), ("workers", "num_workers")):
        if getattr(args, flag, None) is not None:
            extra.append(f"tokenizer_training.{key}={getattr(args, flag)}")
    return extra


def _train_tokenizer(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.train_tokenizer import train_tokenizer_flow

    summary = train_tokenizer_flow(_load(args, _train_tokenizer_overrides(args)))
    return summary.line(), summary.model_dump(mode="json")


def _tokenize_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    for flag in ("dataset", "tokenizer", "resolution", "frames"):
        if getattr(args, flag, None) is not None:
            extra.append(f"tokenize.{flag}={getattr(args, flag)}")
    if args.json:
        extra.append("tokenize.progress=false")
    return extra


def _tokenize(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.tokenize import tokenize_flow

    summary = tokenize_flow(_load(args, _tokenize_overrides(args)))
    return summary.line(), summary.model_dump(mode="json")


def _pretrain_overrides(args: argparse.Namespace) -> list[str]:
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
    return extra


def _pretrain(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.pretrain import pretrain_flow

    summary = pretrain_flow(_load(args, _pretrain_overrides(args)))
    return summary.line(), summary.model_dump(mode="json")


def _promote_overrides(args: argparse.Namespace) -> list[str]:
    if args.rollback and args.candidate:
        raise ValueError("--rollback restores 'previous'; it takes no --candidate")
    return [f"promote.candidate={args.candidate}"] if args.candidate else []


def _evaluate_overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"evaluate.model={args.model}"] if args.model else []
    if args.json:
        extra.append("evaluate.progress=false")
    return extra


def _evaluate(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.evaluate import evaluate_flow

    summary = evaluate_flow(_load(args, _evaluate_overrides(args)))
    return summary.line(), summary.model_dump(mode="json")


def _promote(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.promote import promote_flow

    summary = promote_flow(_load(args, _promote_overrides(args)), rollback=args.rollback)
    return summary.line(), summary.model_dump(mode="json")


def _pipeline_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if getattr(args, "tokenizer", None):
        extra.append(f"pipeline.tokenizer={args.tokenizer}")
    if args.json:
        extra += ["ingest.progress=false", "tokenize.progress=false", "evaluate.progress=false"]
    return extra


def _pipeline(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.pipeline import pipeline_flow

    config = _load(args, _pipeline_overrides(args))
    summary = pipeline_flow(config)
    return _where_to_look(summary, config), summary.model_dump(mode="json")


def _where_to_look(summary: Any, config: Any) -> str:
    """The pipeline's line, then where its results are and how to browse them."""
    lines = [summary.line()]
    if summary.metrics:
        shown = ("fvd", "val_bits_per_token", "prediction_psnr", "seconds_per_video")
        metrics = ", ".join(f"{k} {summary.metrics[k]:.3f}" for k in shown if k in summary.metrics)
        lines.append(f"  metrics of {summary.generator}: {metrics}")
    if summary.samples:
        lines.append(f"  sample video: {summary.samples[0]}")
    if summary.contact_sheet:
        lines.append(f"  contact sheet: {summary.contact_sheet}")
    lines.append(f"  MLflow: mlflow ui --backend-store-uri {config.tracking.uri}")
    lines.append("  Prefect: prefect server start  (then open the flow runs of arvid-pipeline)")
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The main job on the embedded default: make the dataset, then the whole pipeline."""
    plain = argparse.Namespace(**{**vars(args), "out": None, "count": None, "tokenizer": None})
    made_line, made = _make_dataset(plain)
    line, summary = _pipeline(plain)
    return f"{made_line}\n{line}", {"make_dataset": made, "pipeline": summary}


def _serve(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from flows.deployments import serve_deployments

    served = serve_deployments(_load(args, []), names=args.only, limit=args.limit)
    return f"serve: stopped serving {', '.join(served)}", {"served": served}


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
    "evaluate": (
        "score a registered generator (FVD, frame prediction, bits/token) and tag its version",
        _evaluate,
    ),
    "promote": (
        "move the generator's champion alias to a candidate that passes the gates (or roll back)",
        _promote,
    ),
    "pipeline": (
        "ingest -> tokenizer -> tokenize -> pretrain -> evaluate -> promote (skipping done steps)",
        _pipeline,
    ),
    "demo": ("make the demo dataset and run the pipeline on the embedded default", _demo),
    "serve": (
        "register arvid's Prefect deployments and run their flow runs here until stopped",
        _serve,
    ),
    "stack": ("start, stop or check the local service stack (S3, MLflow, Prefect, Ray)", _stack),
}

Check = Callable[[ArvidConfig, argparse.Namespace], None]

# Run before a command imports its flow, so a user error costs a second and one line rather than
# a Prefect server start and a page of tracebacks: the config is loaded with the command's flags,
# then the inputs it names are checked (tasks.preflight). A command without an entry is checked
# by its flow alone.
PREFLIGHT: dict[str, tuple[Callable[[argparse.Namespace], list[str]], Check | None]] = {
    "make-dataset": (_make_dataset_overrides, None),
    "ingest": (_ingest_overrides, lambda config, args: preflight.check_ingest(config)),
    "train-tokenizer": (
        _train_tokenizer_overrides,
        lambda config, args: preflight.check_train_tokenizer(config),
    ),
    "tokenize": (_tokenize_overrides, lambda config, args: preflight.check_tokenize(config)),
    "pretrain": (_pretrain_overrides, lambda config, args: preflight.check_pretrain(config)),
    "promote": (
        _promote_overrides,
        lambda config, args: preflight.check_promote(config, rollback=args.rollback),
    ),
    "evaluate": (_evaluate_overrides, lambda config, args: preflight.check_evaluate(config)),
    "pipeline": (_pipeline_overrides, lambda config, args: preflight.check_pipeline(config)),
    "demo": (_pipeline_overrides, None),  # the demo makes its own source: the config alone
    "serve": (lambda args: [], None),
}


def run_preflight(args: argparse.Namespace) -> None:
    """Load the config as the command will and check what it names; raises the user's error."""
    if args.command not in PREFLIGHT:
        return
    overrides, check = PREFLIGHT[args.command]
    config = _load(args, overrides(args))
    if check is not None:
        check(config, args)


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
        cmd.add_argument(
            "--verbose",
            action="store_true",
            help="on an error, print the Python traceback (and Prefect's) too",
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
        if name == "evaluate":
            cmd.add_argument(
                "--model", help="models:/<name>/N or models:/<name>@alias (default: newest)"
            )
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
        if name == "pipeline":
            cmd.add_argument(
                "--tokenizer", help="reuse this registered tokenizer instead of training one"
            )
        if name == "serve":
            cmd.add_argument(
                "--only",
                action="append",
                choices=deployment_names(),
                help="serve only this deployment (repeatable; default: all)",
            )
            cmd.add_argument("--limit", type=int, help="at most this many flow runs at once")
        if name == "ingest":
            cmd.add_argument(
                "--source", help="folder, s3:// prefix, .jsonl/.csv manifest or shard folder"
            )
            cmd.add_argument("--output", help="datasets root (ingest.output_root)")
            cmd.add_argument("--name", help="dataset name (ingest.name)")
    return parser


class ConsoleFormatter(logging.Formatter):
    """Log lines for the terminal; without --verbose, Prefect's lines lose their tracebacks.

    Prefect logs a failing task's and flow's traceback (twice, for one exception); main() prints
    the error once, so on the terminal they only bury it. Other handlers (Prefect's API log
    handler) still receive the whole record.
    """

    def __init__(self, fmt: str, tracebacks: bool) -> None:
        super().__init__(fmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (plus its traceback with --verbose or outside Prefect)."""
        if self.tracebacks or not record.name.startswith("prefect") or not record.exc_info:
            return super().format(record)
        plain = logging.makeLogRecord(record.__dict__)
        plain.exc_info = plain.exc_text = plain.stack_info = None
        return super().format(plain)


def _user_error(args: argparse.Namespace, exc: BaseException) -> int:
    """Print a user error as one line on stderr (its traceback first with --verbose); exit code 2."""
    if args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"arvid {args.command}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `arvid` console script."""
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler()
    console.setFormatter(ConsoleFormatter("%(levelname)s %(name)s: %(message)s", args.verbose))
    logging.basicConfig(
        level=logging.INFO if not args.json else logging.WARNING, handlers=[console]
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
        run_preflight(args)
        line, summary = run(args)
    except (ConfigError, FileNotFoundError, ValueError, StorageError) as exc:
        return _user_error(args, exc)
    print(line)
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
