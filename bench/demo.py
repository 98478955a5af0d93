"""The main job's wall time: `arvid demo` twice in a fresh folder, as `make demo` runs it.

The first run does everything (make the dataset, ingest, train the tokenizer, tokenize, pretrain,
evaluate, promote); the second finds every step done. Each run is a separate `arvid demo --json`
process with a fresh Prefect home (so the temporary Prefect server's start-up is counted, as on a
new machine); the per-step times come from the pipeline's own summary. Not counted: creating the
virtual environment, and downloading the I3D weights when the cache already holds them (the
figures say whether it did).
Usage: python bench/demo.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import goal, write_results  # noqa: E402
from tasks.config import DEFAULT_CONFIG_PATH, REPO_ROOT  # noqa: E402
from tasks.evaluate.i3d_weights import CACHE_ENV, DEFAULT_CACHE_DIR, WEIGHTS_FILE  # noqa: E402

FIRST_RUN_GOAL_S = 15 * 60
SECOND_RUN_GOAL_SHARE = 0.10


def run_demo(workdir: Path, env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds of one `arvid demo --json` in `workdir`, and its summary."""
    arvid = Path(sys.executable).with_name("arvid")
    command = [str(arvid), "demo", "--json", "--config", str(DEFAULT_CONFIG_PATH)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"arvid demo exited with {done.returncode}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="arvid-demo-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = os.environ.get(CACHE_ENV) or str(REPO_ROOT / DEFAULT_CACHE_DIR)
    env = {
        **os.environ,
        CACHE_ENV: cache,
        "PREFECT_HOME": str(workdir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    i3d_cached = (Path(cache) / WEIGHTS_FILE).is_file()
    first_s, first = run_demo(workdir, env)
    second_s, second = run_demo(workdir, env)
    pipeline = first["pipeline"]
    figures = {
        "first_run_s": round(first_s, 1),
        "second_run_s": round(second_s, 1),
        "second_over_first": round(second_s / first_s, 4),
        "first_run_steps_s": {s["name"]: s["seconds"] for s in pipeline["steps"]},
        "second_run_steps": {
            s["name"]: f"{s['status']} ({s['seconds']} s)" for s in second["pipeline"]["steps"]
        },
        "pipeline_s": pipeline["seconds"],
        "make_dataset_and_startup_s": round(first_s - pipeline["seconds"], 1),
        "generator": pipeline["generator"],
        "promotion": pipeline["promotion"],
        "metrics": pipeline["metrics"],
        "i3d_weights_cached_before": i3d_cached,
        "cpu_count": os.cpu_count(),
    }
    goals = [
        goal("first `arvid demo`, wall s", first_s, f"<= {FIRST_RUN_GOAL_S} s on 2 cores",
             first_s <= FIRST_RUN_GOAL_S),
        goal("second `arvid demo` / first", second_s / first_s,
             f"<= {SECOND_RUN_GOAL_SHARE}", second_s / first_s <= SECOND_RUN_GOAL_SHARE),
    ]  # fmt: skip
    path = write_results("demo", figures, goals)
    print(json.dumps({"figures": figures, "goals": goals}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
