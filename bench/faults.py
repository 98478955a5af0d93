"""The fault-injection suite as a benchmark: bench/results/faults.json, one goal per fault.

Runs tests/infra/test_faults.py (each test breaks one service of the local stack while a job
runs) and records, per fault, whether the run finished with exactly the clean run's output —
nothing lost, nothing duplicated — and the seconds it took; plus the stack's start-up time and the
clean runs' times. Usage: python bench/faults.py [-k EXPR]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import goal, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAME_OUTPUT = "finishes (or a re-run resumes) with the clean run's manifest: nothing lost or twice"
# Each fault and the goal the issue sets for it.
FAULTS = {
    "s3_restart_mid_ingest": SAME_OUTPUT,
    "s3_restart_mid_tokenization": SAME_OUTPUT,
    "ray_worker_node_killed_mid_tokenization": SAME_OUTPUT,
    "ray_worker_node_killed_mid_training": "finishes from its checkpoint, every step once",
    "mlflow_down_during_training": "no crash; the outage's metrics logged once it is back",
    "prefect_server_restarted_during_a_flow": "a re-run skips completed steps; same manifest",
    "read_only_output_location": "a clear error naming it, nothing half-published",
    "two_concurrent_ingestions_into_one_output": "both publish the same version, manifest intact",
}


def faults_results(lines: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Figures and goals from the records the fault tests wrote (one JSON object a line)."""
    figures: dict[str, Any] = {}
    records = {}
    for line in lines:
        if "fault" in line:
            records[line["fault"]] = line
        elif "stack_up_s" in line:
            figures["stack_up_s"] = line["stack_up_s"]
        elif "clean_run_s" in line:
            figures.update({f"clean_{k}_s": v for k, v in line["clean_run_s"].items()})
    goals = []
    for fault, target in FAULTS.items():
        record = records.get(fault)
        if record is None:
            goals.append(goal(f"{fault}_survived", 0, target, False))
            continue
        figures[f"{fault}_s"] = record["seconds"]
        if record.get("extra_seconds"):
            figures[f"{fault}_extra_over_clean_s"] = record["extra_seconds"]
        if record.get("notes"):
            figures[f"{fault}_notes"] = "; ".join(record["notes"])
        goals.append(
            goal(f"{fault}_survived", 1.0 if record["met"] else 0.0, target, record["met"])
        )
    return figures, goals


def main() -> int:
    """Run the fault tests against a fresh local stack and write bench/results/faults.json."""
    with tempfile.TemporaryDirectory(prefix="arvid-faults-") as tmp:
        report = Path(tmp) / "faults.jsonl"
        env = {**os.environ, "ARVID_FAULTS_JSON": str(report)}
        tests = ["tests/infra/test_faults.py", *sys.argv[1:]]
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, env=env)
        lines = [json.loads(x) for x in report.read_text().splitlines()] if report.exists() else []
    figures, goals = faults_results(lines)
    path = write_results("faults", figures, goals)
    print(f"faults: {sum(g['met'] for g in goals)} of {len(goals)} faults survived -> {path}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
