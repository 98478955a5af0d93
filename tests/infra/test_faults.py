"""What arvid survives on the local stack: each test breaks one service while a job runs, then
checks the output is exactly the clean run's — nothing lost, nothing twice (the manifest's
content hash is the version, so equal versions mean equal manifests).

Every fault is bounded in time. With ARVID_FAULTS_JSON set, each test appends what it measured
(met or not, seconds the fault cost) to that file; bench/faults.py turns it into
bench/results/faults.json.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from infra.local_stack import LocalStack
from tests.infra.conftest import INGEST, TOKENIZE, TRAIN, CleanRun
from tests.infra.stack_support import (
    BackgroundJob,
    JobResult,
    read_manifest_rows,
    run_arvid,
    s3_keys,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.stack]

OUTAGE_S = 3.0  # how long a killed service stays down
# Long enough that a fault lands mid-training (the clean run trains 6 steps): a step takes ~1 s
# here, so ~12 steps are left after the first checkpoint, at step 4.
FAULT_STEPS = 16
LONG_TRAIN = (*TRAIN, "--steps", str(FAULT_STEPS), "--set", "tokenizer_training.checkpoint_every=4")
MLFLOW_OUTAGE_S = 6.0  # shorter than the steps left: the outage lands while training runs


@dataclass
class FaultRecord:
    """What one fault test measured, for bench/results/faults.json."""

    fault: str
    met: bool = False
    seconds: float = 0.0
    extra_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[FaultRecord]:
    """A record of this fault; written to $ARVID_FAULTS_JSON when the test ends."""
    entry = FaultRecord(fault=request.node.name.removeprefix("test_"))
    started = time.monotonic()
    yield entry
    entry.seconds = round(time.monotonic() - started, 1)
    report = getattr(request.node, "rep_call", None)
    entry.met = entry.met and report is not None and report.passed
    path = os.environ.get("ARVID_FAULTS_JSON")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(vars(entry)) + "\n")


def _finish_or_rerun(
    stack: LocalStack, job: BackgroundJob, record: FaultRecord, command: str, *args: str
) -> JobResult:
    """The job's result; if the fault made it fail, a re-run's (which must resume)."""
    result = job.wait()
    if result.returncode == 0:
        record.notes.append("the run itself finished")
        return result
    record.notes.append(f"the run failed (exit {result.returncode}); a re-run resumed")
    rerun = run_arvid(stack, command, *args)
    assert rerun.returncode == 0, (
        f"re-run after the fault failed:\n{rerun.output[-3000:]}\nfirst run:\n{result.output[-3000:]}"
    )
    rerun.seconds += result.seconds
    rerun.output = result.output + rerun.output
    return rerun


def _restart(stack: LocalStack, service: str, outage: float = OUTAGE_S) -> None:
    stack.stop_service(service, signal.SIGKILL)
    time.sleep(outage)
    stack.start_service(service)


def _assert_same_dataset(stack: LocalStack, root: str, result: JobResult, clean: CleanRun) -> None:
    assert result.summary is not None, result.output[-3000:]
    assert result.summary["version"] == clean.ingest["version"]
    rows = read_manifest_rows(stack, f"{root}/demo/{result.summary['version']}/manifest.jsonl")
    assert len(rows) == clean.ingest["clips_total"]
    assert len({row["key"] for row in rows}) == len(rows)


def _assert_same_tokens(stack: LocalStack, result: JobResult, clean: CleanRun) -> None:
    assert result.summary is not None, result.output[-3000:]
    assert result.summary["tokens_version"] == clean.tokenize["tokens_version"]
    key = result.summary["manifest"].removeprefix("s3://arvid/")
    rows = read_manifest_rows(stack, key)
    assert len(rows) == clean.tokenize["clips_total"]
    assert len({json.dumps(row, sort_keys=True) for row in rows}) == len(rows)


def test_s3_restart_mid_ingest(local_stack: LocalStack, clean_run: CleanRun, record) -> None:
    root = "faults/s3-ingest"
    job = BackgroundJob(local_stack, "ingest", "--output", f"s3://arvid/{root}", *INGEST)
    wait_for(
        "a first shard record", lambda: s3_keys(local_stack, f"{root}/demo/batches/"), 300, job
    )
    _restart(local_stack, "s3")
    result = _finish_or_rerun(
        local_stack, job, record, "ingest", "--output", f"s3://arvid/{root}", *INGEST
    )
    _assert_same_dataset(local_stack, root, result, clean_run)
    record.extra_seconds = round(result.seconds - clean_run.seconds["ingest"], 1)
    record.met = True


@pytest.mark.fault_heavy
def test_s3_restart_mid_tokenization(local_stack: LocalStack, clean_run: CleanRun, record) -> None:
    root = "faults/s3-tokens"
    args = (*TOKENIZE, "--set", f"tokenize.tokens_root=s3://arvid/{root}")
    job = BackgroundJob(local_stack, "tokenize", *args)
    wait_for("a first token shard", lambda: s3_keys(local_stack, f"{root}/"), 300, job)
    _restart(local_stack, "s3")
    result = _finish_or_rerun(local_stack, job, record, "tokenize", *args)
    _assert_same_tokens(local_stack, result, clean_run)
    record.extra_seconds = round(result.seconds - clean_run.seconds["tokenize"], 1)
    record.met = True


def test_ray_worker_node_killed_mid_tokenization(
    local_stack: LocalStack, clean_run: CleanRun, record
) -> None:
    root = "faults/ray-tokens"
    # Three 0.5-CPU actors fill the two 1-CPU nodes but for one decode slot, so whichever node
    # dies while work remains, the head alone cannot hold them all and decode: the pool shrinks.
    args = (*TOKENIZE, "--set", f"tokenize.tokens_root=s3://arvid/{root}")
    args += ("--set", "tokenize.num_actors=3")
    job = BackgroundJob(local_stack, "tokenize", *args)
    try:
        wait_for("a first token shard", lambda: s3_keys(local_stack, f"{root}/"), 300, job)
        local_stack.stop_service("ray-worker", signal.SIGKILL)
        # The node stays away: the run shrinks its actor pool to what the head holds.
        result = job.wait()
        assert result.returncode == 0, result.output[-4000:]
    finally:
        if not local_stack.running()["ray-worker"]:
            local_stack.start_service("ray-worker")
    _assert_same_tokens(local_stack, result, clean_run)
    record.notes.append("the run itself finished on the head")
    # What the driver did about the lost node: batches moved off lost actors, the pool shrunk.
    warnings = [line for line in result.output.splitlines() if "WARNING arvid.tokenize" in line]
    record.notes += [line.split("arvid.tokenize: ", 1)[-1].split(" (")[0] for line in warnings]
    # No assertion on these: a kill that lands after the last batch was handed out needs none.
    record.extra_seconds = round(result.seconds - clean_run.seconds["tokenize"], 1)
    record.met = True


@pytest.mark.fault_heavy
def test_ray_worker_node_killed_mid_training(
    local_stack: LocalStack, clean_run: CleanRun, record
) -> None:
    checkpoints = "faults/ray-train-checkpoints"
    args = (*LONG_TRAIN, "--set", f"tokenizer_training.checkpoint_dir=s3://arvid/{checkpoints}")
    job = BackgroundJob(local_stack, "train-tokenizer", *args)
    try:
        wait_for("a first checkpoint", lambda: s3_keys(local_stack, f"{checkpoints}/"), 300, job)
        local_stack.stop_service("ray-worker", signal.SIGKILL)
        time.sleep(OUTAGE_S)
        # A lost node comes back (as a cluster's autoscaler or a pod restart would bring it).
        local_stack.start_service("ray-worker")
        # Only the replacement is alive: the killed node is not left as a phantom to place work on.
        assert local_stack.ray_nodes() == 2
        result = _finish_or_rerun(local_stack, job, record, "train-tokenizer", *args)
    finally:
        if not local_stack.running()["ray-worker"]:
            local_stack.start_service("ray-worker")
    assert result.summary is not None and result.summary["steps"] == FAULT_STEPS
    record.notes.append(f"resumed from step {result.summary['resumed_from_step']}")
    record.met = True


@pytest.mark.fault_heavy
def test_mlflow_down_during_training(local_stack: LocalStack, clean_run: CleanRun, record) -> None:
    checkpoints = "faults/mlflow-train-checkpoints"
    args = (*LONG_TRAIN, "--set", f"tokenizer_training.checkpoint_dir=s3://arvid/{checkpoints}")
    job = BackgroundJob(local_stack, "train-tokenizer", *args)
    wait_for("a first checkpoint", lambda: s3_keys(local_stack, f"{checkpoints}/"), 300, job)
    local_stack.stop_service("mlflow", signal.SIGKILL)
    time.sleep(MLFLOW_OUTAGE_S)
    local_stack.start_service("mlflow")
    result = job.wait()
    assert result.returncode == 0, result.output[-4000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_stack.endpoints().mlflow)
    history = client.get_metric_history(result.summary["run_id"], "lr")
    steps = sorted(m.step for m in history)
    # Every logged step, once: the outage's metrics arrived when the server was back.
    assert steps == list(range(2, FAULT_STEPS + 1, 2)), steps
    record.met = True


def test_prefect_server_restarted_during_a_flow(
    local_stack: LocalStack, clean_run: CleanRun, record
) -> None:
    root = "faults/prefect-ingest"
    args = ("--output", f"s3://arvid/{root}", *INGEST)
    job = BackgroundJob(local_stack, "ingest", *args)
    wait_for(
        "a first shard record", lambda: s3_keys(local_stack, f"{root}/demo/batches/"), 300, job
    )
    _restart(local_stack, "prefect")
    first = job.wait()
    # Whether or not the first run survived, a re-run skips what is complete.
    rerun = run_arvid(local_stack, "ingest", *args)
    assert rerun.returncode == 0, rerun.output[-3000:]
    _assert_same_dataset(local_stack, root, rerun, clean_run)
    assert rerun.summary["inputs_skipped"] > 0 and rerun.summary["shards_new"] < 4
    record.notes.append(f"first run exit code {first.returncode}")
    record.extra_seconds = round(first.seconds + rerun.seconds - clean_run.seconds["ingest"], 1)
    record.met = True


def test_read_only_output_location(local_stack: LocalStack, clean_run: CleanRun, record) -> None:
    root = "faults/read-only"
    creds = local_stack._ensure_credentials()
    env_overrides = {
        "AWS_ACCESS_KEY_ID": creds.s3_reader_access_key,
        "AWS_SECRET_ACCESS_KEY": creds.s3_reader_secret_key.get_secret_value(),
    }
    result = run_arvid(
        local_stack, "ingest", "--output", f"s3://arvid/{root}", *INGEST, env=env_overrides
    )
    assert result.returncode == 2, result.output[-3000:]
    # The command's own last word: one line naming the location and the cause (Prefect's flow-run
    # log above it may show the traceback).
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("arvid ingest: error: ") and f"s3://arvid/{root}/" in last, last
    assert "access denied" in last, last
    assert s3_keys(local_stack, f"{root}/") == []  # nothing half-published
    record.met = True


def test_two_concurrent_ingestions_into_one_output(
    local_stack: LocalStack, clean_run: CleanRun, record
) -> None:
    root = "faults/concurrent"
    args = ("--output", f"s3://arvid/{root}", *INGEST)
    jobs = [BackgroundJob(local_stack, "ingest", *args) for _ in range(2)]
    results = [job.wait() for job in jobs]
    for result in results:
        assert result.returncode == 0, result.output[-3000:]
        _assert_same_dataset(local_stack, root, result, clean_run)
    latest = json.loads(
        local_stack._s3_client()
        .get_object(Bucket="arvid", Key=f"{root}/demo/latest.json")["Body"]
        .read()
    )
    assert latest["version"] == clean_run.ingest["version"]
    record.extra_seconds = round(max(r.seconds for r in results) - clean_run.seconds["ingest"], 1)
    record.met = True
