"""The local stack, started once for the whole session by the tests that need it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from infra.local_stack import LocalStack
from tests.infra.stack_support import run_arvid


def _report(entry: dict[str, Any]) -> None:
    """Append a measurement to $ARVID_FAULTS_JSON (bench/faults.py reads it), if set."""
    path = os.environ.get("ARVID_FAULTS_JSON")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


VIDEOS = 8  # 4 shards of 2 inputs: faults can land between shards


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """S3, PostgreSQL, MLflow, Prefect and a two-node Ray on loopback, for the session."""
    stack = LocalStack.open(tmp_path_factory.mktemp("stack"))
    started = time.monotonic()
    stack.up()
    _report({"stack_up_s": round(time.monotonic() - started, 1)})
    try:
        yield stack
    finally:
        stack.destroy()


@pytest.fixture(scope="session")
def stack_videos(local_stack: LocalStack) -> str:
    """The synthetic videos the stack's jobs ingest (local files, as make-dataset writes them)."""
    result = run_arvid(
        local_stack,
        "make-dataset",
        "--count",
        str(VIDEOS),
        "--set",
        "ingest.inputs_per_shard=2",
    )
    assert result.returncode == 0, result.output[-3000:]
    return str(local_stack.root / "raw" / "labels.jsonl")


# Ingestion in small shards (faults land between them); a tokenizer trained for a few steps, at
# batch 4 rather than the demo's 8: the faults' timing assumes a step of ~1 s.
INGEST = ("--set", "ingest.inputs_per_shard=2")
TRAIN = (
    "--steps",
    "6",
    "--workers",
    "2",
    "--set",
    "tokenizer_training.batch_size=4",
    "--set",
    "tokenizer_training.checkpoint_every=2",
    "--set",
    "tokenizer_training.sample_every=1000",
    "--set",
    "tokenizer_training.log_every=2",
)
TOKENIZE = ("--resolution", "64", "--frames", "9", "--set", "tokenize.batch_size=2")


@dataclass
class CleanRun:
    """The reference: what ingest, tokenizer training and tokenization give with no fault."""

    ingest: dict[str, Any]
    train: dict[str, Any]
    tokenize: dict[str, Any]
    seconds: dict[str, float]
    outputs: dict[str, str]


@pytest.fixture(scope="session")
def clean_run(local_stack: LocalStack, stack_videos: str) -> CleanRun:
    """Ingest, train a tokenizer and tokenize against the stack once, with nothing broken."""
    seconds, summaries, outputs = {}, {}, {}
    for name, command, args in (
        ("ingest", "ingest", INGEST),
        ("train", "train-tokenizer", TRAIN),
        ("tokenize", "tokenize", TOKENIZE),
    ):
        result = run_arvid(local_stack, command, *args)
        assert result.returncode == 0 and result.summary, f"{command}:\n{result.output[-4000:]}"
        summaries[name] = result.summary
        seconds[name] = result.seconds
        outputs[name] = result.output
    _report({"clean_run_s": {name: round(value, 1) for name, value in seconds.items()}})
    return CleanRun(
        summaries["ingest"], summaries["train"], summaries["tokenize"], seconds, outputs
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each test's call report on the item, so a fault record knows if its test passed."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the fault tests after the other stack tests, and the security scans last: faults kill
    and restart services and Ray nodes, which the others must not see (e.g. which Ray nodes ran a
    job's tasks: a killed node's old tasks would count as a third node), and the credential scan
    then covers the faulted runs' logs too. Only the stack tests' slots change."""

    def phase(item: pytest.Item) -> int:
        return 2 if "test_security.py" in item.nodeid else int("test_faults.py" in item.nodeid)

    slots = [n for n, item in enumerate(items) if item.nodeid.startswith("tests/infra/")]
    block = sorted((items[n] for n in slots), key=phase)
    for n, item in zip(slots, block, strict=True):
        items[n] = item
