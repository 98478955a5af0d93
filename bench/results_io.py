"""Write benchmark results in the project's format (bench/results/<bench>[.<gpu>].json)."""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.tracking import git_commit

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_device() -> str:
    """A short description of the CPU the numbers come from."""
    return f"cpu ({os.cpu_count()} cores)"


def goal(figure: str, value: float, target: str, met: bool) -> dict[str, Any]:
    """One goal line: the measured value, the target as the issue writes it, and whether it is met."""
    return {"figure": figure, "value": round(value, 4), "goal": target, "met": bool(met)}


def median_of(fn: Callable[[], float], repeats: int) -> float:
    """Median of `repeats` calls of a timing function."""
    return statistics.median(fn() for _ in range(repeats))


def bench_command(argv: list[str]) -> str:
    """The command line as a reader would retype it: absolute paths (a scratch folder of this
    machine) become `<path>`, so a result names no machine's layout."""
    args = ["<path>" if Path(arg).is_absolute() else arg for arg in argv[1:]]
    return "python " + " ".join(["bench/" + Path(argv[0]).name, *args])


def write_results(
    bench: str,
    figures: dict[str, Any],
    goals: list[dict[str, Any]],
    device: str | None = None,
    suffix: str | None = None,
    path: Path | None = None,
) -> Path:
    """Write bench/results/<bench>[.<suffix>].json (or `path`, e.g. for a smoke run) and return
    its path."""
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / (f"{bench}.{suffix}.json" if suffix else f"{bench}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": bench,
        "command": bench_command(sys.argv),
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit()[:7],
        "device": device or cpu_device(),
        "figures": figures,
        "goals": goals,
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
