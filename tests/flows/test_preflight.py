"""User errors fail fast: `arvid` names them in one line, exit code 2, before Prefect, Ray or MLflow.

Each case runs the real CLI in a fresh interpreter with no Prefect API configured and a fresh
PREFECT_HOME: a temporary Prefect server would create its database there, and Prefect, Ray or
MLflow would show in the interpreter's modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.ingest.run import IngestSummary
from tasks.tracking import TrackingConfig
from tests.support.mlflow_store import fresh_store_uri
from tests.tasks.promote.support import register_generator
from tests.tasks.tokenize.support import make_dataset

HEAVY = ("prefect", "ray", "mlflow", "torch")
# A temporary Prefect server alone takes 10-40 s to start here; a user error must cost far less.
FAST_S = 8.0

# Runs `arvid` as the console script does, then reports which heavy packages were imported.
PROBE = f"""
import json, sys
from flows.cli import main
code = main(sys.argv[1:])
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
sys.exit(code)
"""


@dataclass(frozen=True)
class Outcome:
    """What one CLI run left behind."""

    code: int
    stdout: str
    stderr: list[str]
    seconds: float
    prefect_home: Path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A published dataset, and a sqlite store holding arvid-generator v1 but no tokenizer."""
    root = tmp_path_factory.mktemp("preflight")
    tracking = TrackingConfig(
        uri=fresh_store_uri(root / "mlflow.db"),
        experiment="arvid-preflight-test",
        artifact_location=str(root / "mlartifacts"),
    )
    register_generator(tracking, root)
    dataset: IngestSummary = make_dataset(root, count=2)
    return {"root": root, "tracking": tracking, "dataset": dataset}


def _env(prefect_home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_ADDRESS"))
    }
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def run_cli(args: list[str], cwd: Path, console_script: bool = False, **env: str) -> Outcome:
    """Run `arvid args...` in a fresh interpreter in `cwd` with a fresh, unused PREFECT_HOME."""
    prefect_home = cwd / f"prefect-home-{time.monotonic_ns()}"
    if console_script:
        command = [str(Path(sys.executable).parent / "arvid"), *args]
    else:
        command = [sys.executable, "-c", PROBE, *args]
    start = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**_env(prefect_home), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Outcome(
        code=result.returncode,
        stdout=result.stdout,
        stderr=result.stderr.splitlines(),
        seconds=time.perf_counter() - start,
        prefect_home=prefect_home,
    )


def assert_fast_user_error(outcome: Outcome, command: str, *fragments: str) -> None:
    """Exit code 2, exactly one stderr line naming the input, fast, and nothing heavy started."""
    assert outcome.code == 2, outcome
    assert len(outcome.stderr) == 1, "\n".join(outcome.stderr)
    line = outcome.stderr[0]
    assert line.startswith(f"arvid {command}: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    # A temporary Prefect server creates its database (and the folder) in PREFECT_HOME.
    assert not outcome.prefect_home.exists(), sorted(outcome.prefect_home.rglob("*"))
    assert outcome.seconds < FAST_S, outcome.seconds


def _tracking_sets(tracking: TrackingConfig) -> list[str]:
    return ["--set", f"tracking.uri={tracking.uri}"]


def _cases(ws: dict) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    root: Path = ws["root"]
    dataset: IngestSummary = ws["dataset"]
    tracking = _tracking_sets(ws["tracking"])
    return {
        "missing source folder": (
            ["ingest", "--source", str(root / "missing" / "dir")],
            (f"{root / 'missing' / 'dir'}: source folder not found (ingest.source)", "a folder"),
        ),
        "source folder without videos": (
            ["ingest", "--source", str(root / "mlartifacts")],
            ("no videos", "ingest.source"),
        ),
        "missing manifest": (
            ["ingest", "--source", str(root / "nowhere.jsonl")],
            ("nowhere.jsonl: manifest not found (ingest.source)",),
        ),
        "missing dataset": (
            ["tokenize", "--dataset", str(root / "datasets" / "nothing"), *tracking],
            ("nothing: no such dataset folder (tokenize.dataset)", "arvid ingest"),
        ),
        "bad dataset version": (
            ["tokenize", "--dataset", f"{dataset.dataset_root}@0badc0de", *tracking],
            (
                "dataset version '0badc0de' not found",
                "(tokenize.dataset)",
                f"versions here: {dataset.version}",
            ),
        ),
        "malformed model reference": (
            [
                "tokenize",
                "--dataset",
                dataset.dataset_root,
                "--tokenizer",
                "models:/arvid-tokenizer/first",
                *tracking,
            ],
            (
                "models:/arvid-tokenizer/first: version 'first' must be a number",
                "tokenize.tokenizer",
            ),
        ),
        "unregistered model in an existing sqlite store": (
            [
                "pretrain",
                "--dataset",
                dataset.dataset_root,
                "--tokenizer",
                "models:/arvid-tokenizer@champion",
                *tracking,
            ],
            ("no such registered model 'arvid-tokenizer'", "(pretrain.tokenizer)"),
        ),
        "missing alias of a registered model": (
            ["promote", "--candidate", "models:/arvid-generator@champion", *tracking],
            ("no such registered model alias of 'arvid-generator'", "versions: 1"),
        ),
        "missing version of a registered model": (
            ["promote", "--candidate", "models:/arvid-generator/9", *tracking],
            ("models:/arvid-generator/9: no such registered model version", "versions"),
        ),
        "missing tracking store": (
            [
                "tokenize",
                "--dataset",
                dataset.dataset_root,
                "--set",
                f"tracking.uri=sqlite:///{root / 'none.db'}",
            ],
            ("none.db does not exist yet", "tokenize.tokenizer"),
        ),
        "unknown config key": (
            ["ingest", "--set", "ingest.nope=1"],
            ("ingest.nope: Extra inputs",),
        ),
        "bad config value": (
            ["ingest", "--set", "ingest.fps=-1"],
            ("ingest.fps: Input should be greater than 0",),
        ),
        "missing config file": (
            ["ingest", "--config", str(root / "none.yaml")],
            ("none.yaml: config file not found",),
        ),
    }


CASES = [
    "missing source folder",
    "source folder without videos",
    "missing manifest",
    "missing dataset",
    "bad dataset version",
    "malformed model reference",
    "unregistered model in an existing sqlite store",
    "missing alias of a registered model",
    "missing version of a registered model",
    "missing tracking store",
    "unknown config key",
    "bad config value",
    "missing config file",
]


@pytest.mark.parametrize("case", CASES)
def test_user_error_exits_2_in_one_line_before_prefect_ray_or_mlflow(
    case: str, workspace: dict, tmp_path: Path
) -> None:
    args, fragments = _cases(workspace)[case]
    outcome = run_cli(args, tmp_path)
    assert_fast_user_error(outcome, args[0], *fragments)
    imported = json.loads(outcome.stdout.splitlines()[-1])
    assert imported == [], imported  # none of Prefect, Ray, MLflow or torch


def test_console_script_names_a_missing_source_in_one_line_fast(tmp_path: Path) -> None:
    outcome = run_cli(["ingest", "--source", "/missing/dir"], tmp_path, console_script=True)
    assert_fast_user_error(outcome, "ingest", "/missing/dir: source folder not found")
    assert outcome.stdout == ""


def test_verbose_adds_the_traceback_above_the_same_error_line(tmp_path: Path) -> None:
    outcome = run_cli(["ingest", "--source", "/missing/dir", "--verbose"], tmp_path)
    assert outcome.code == 2
    assert outcome.stderr[0] == "Traceback (most recent call last):"
    assert any("PreflightError" in line for line in outcome.stderr)
    assert outcome.stderr[-1].startswith("arvid ingest: error: /missing/dir: source folder not")


def test_valid_inputs_pass_the_preflight(workspace: dict, tmp_path: Path) -> None:
    """The checks accept what exists: a model folder, a published dataset and its version."""
    from tasks.config import load_config
    from tasks.preflight import check_dataset, check_model_reference, check_promote
    from tasks.settings import ArvidConfig

    dataset: IngestSummary = workspace["dataset"]
    tracking: TrackingConfig = workspace["tracking"]
    check_dataset(dataset.dataset_root, "tokenize.dataset")
    check_dataset(f"{dataset.dataset_root}@{dataset.version}", "tokenize.dataset")
    model_folder = next(workspace["root"].glob("generator-*"))
    check_model_reference(str(model_folder), "tokenize.tokenizer", tracking.uri)
    check_model_reference("models:/arvid-generator/1", "promote.candidate", tracking.uri)
    check_model_reference("models:/arvid-generator/latest", "promote.candidate", tracking.uri)
    check_model_reference("s3://bucket/models/x", "tokenize.tokenizer", tracking.uri)
    config = load_config(ArvidConfig, None, [f"tracking.uri={tracking.uri}"])
    check_promote(config)  # the newest version of arvid-generator
    check_promote(config, rollback=True)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_an_error_inside_a_flow_prints_no_prefect_traceback_without_verbose(
    workspace: dict, tmp_path: Path
) -> None:
    """Past the checks, the flow's own error still ends the run with one clear line: Prefect's
    tracebacks of the failed task and flow run show only with --verbose."""
    from prefect.settings import PREFECT_API_URL

    args = ["promote", "--rollback", *_tracking_sets(workspace["tracking"])]
    api = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    expected = "arvid promote: error: arvid-generator: no 'previous' version to roll back to"

    quiet = run_cli(args, tmp_path, **api)
    assert quiet.code == 2, quiet
    assert not any("Traceback" in line for line in quiet.stderr), "\n".join(quiet.stderr)
    assert sum(expected in line for line in quiet.stderr) == 1, "\n".join(quiet.stderr)
    assert any("Finished in state Failed" in line for line in quiet.stderr)  # Prefect still says

    verbose = run_cli([*args, "--verbose"], tmp_path, **api)
    assert verbose.code == 2, verbose
    assert sum("Traceback (most recent call last):" in line for line in verbose.stderr) >= 2
    assert verbose.stderr[-1].startswith(expected), verbose.stderr[-1]
