"""Helpers for tests against the local stack: run `arvid` as its own process with the stack's
environment (as a user would after sourcing stack.env), read manifests and where Ray ran work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local_stack import LocalStack

# Variables of the test session (its own Prefect, MLflow, S3) that must not reach a stack job.
_SESSION_PREFIXES = ("AWS_", "MLFLOW_", "PREFECT_", "RAY_", "ARVID_")


def stack_env(stack: LocalStack) -> dict[str, str]:
    """The environment of a job that uses the stack: the session's, minus its services, plus
    the stack's (what `set -a; . stack.env` gives a shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SESSION_PREFIXES)}
    env.update(stack.client_env())
    env["PREFECT_HOME"] = str(stack.root / "client-prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@dataclass
class JobResult:
    """One finished `arvid` run: exit code, its --json summary (if any) and its output."""

    returncode: int
    summary: dict[str, Any] | None
    output: str
    seconds: float


def _arvid_args(stack: LocalStack, command: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flows.cli",
        command,
        "--config",
        str(stack.config_path),
        "--json",
        *args,
    ]


def _summary(output: str) -> dict[str, Any] | None:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_arvid(
    stack: LocalStack,
    command: str,
    *args: str,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> JobResult:
    """Run `arvid <command> --config <stack config> --json <args>` to the end (`env` on top of
    the stack's)."""
    started = time.monotonic()
    out = subprocess.run(
        _arvid_args(stack, command, *args),
        env={**stack_env(stack), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = out.stdout + out.stderr
    return JobResult(out.returncode, _summary(out.stdout), output, time.monotonic() - started)


class BackgroundJob:
    """An `arvid` run in the background, so a test can break a service while it works."""

    def __init__(self, stack: LocalStack, command: str, *args: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"arvid-{command}-", suffix=".log")[1])
        self.started = time.monotonic()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                _arvid_args(stack, command, *args),
                env=stack_env(stack),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        """Whether the job has not ended yet."""
        return self.process.poll() is None

    def wait(self, timeout: float = 600) -> JobResult:
        """Wait for the job to end and return what it did."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        output = self.log.read_text(errors="replace")
        self.log.unlink(missing_ok=True)
        return JobResult(
            self.process.returncode, _summary(output), output, time.monotonic() - self.started
        )


def wait_for(what: str, condition, timeout: float, job: BackgroundJob | None = None) -> None:
    """Poll `condition` until true; fail naming `what` (and the job's output if it ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if job is not None and not job.running():
            raise AssertionError(f"the job ended before {what}:\n{job.wait().output[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def s3_keys(stack: LocalStack, prefix: str) -> list[str]:
    """Every key under `prefix` of the stack's bucket."""
    client = stack._s3_client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="arvid", Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def read_manifest_rows(stack: LocalStack, key: str) -> list[dict[str, Any]]:
    """The rows of a manifest.jsonl in the stack's bucket."""
    body = stack._s3_client().get_object(Bucket="arvid", Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


_NODES_SCRIPT = """
import json, sys
import ray
from ray.util.state import list_actors, list_tasks
ray.init(address=sys.argv[1], logging_level="ERROR")
names = set(sys.argv[2].split(","))
nodes = {}
for task in list_tasks(limit=10000, raise_on_missing_output=False):
    if any(name in task.name for name in names) and task.node_id:
        nodes.setdefault(task.node_id, []).append(task.name)
for actor in list_actors(limit=10000, raise_on_missing_output=False):
    if any(name in actor.class_name for name in names) and actor.node_id:
        nodes.setdefault(actor.node_id, []).append(actor.class_name)
print(json.dumps({node: sorted(set(found)) for node, found in nodes.items()}))
"""


def nodes_that_ran(stack: LocalStack, names: list[str]) -> dict[str, list[str]]:
    """Ray node id -> the task and actor names (containing one of `names`) that ran there."""
    out = subprocess.run(
        [sys.executable, "-c", _NODES_SCRIPT, stack.endpoints().ray_address, ",".join(names)],
        env=stack_env(stack),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
