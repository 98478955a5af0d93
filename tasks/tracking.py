"""The one place that talks to MLflow: runs with lineage tags, flat params, metrics, artifacts."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.config import REPO_ROOT, StrictModel


class TrackingConfig(StrictModel):
    """Where runs go: an MLflow tracking URI (sqlite file by default) and an experiment name."""

    uri: str = "sqlite:///.arvid/mlflow.db"
    experiment: str = "arvid"
    # Artifacts of a new experiment; None keeps MLflow's default beside the tracking store.
    artifact_location: str | None = ".arvid/mlartifacts"


@functools.cache
def git_commit() -> str:
    """The commit of the code that runs, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _resolve_sqlite_uri(uri: str) -> str:
    """Make a relative sqlite path absolute and create its folder, so runs land where the user said."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    path = Path(uri[len(prefix) :]).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def _artifact_uri(location: str | None) -> str | None:
    if location is None or "://" in location:
        return location
    path = Path(location).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def setup_tracking(config: TrackingConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(_resolve_sqlite_uri(config.uri))
    experiment = mlflow.get_experiment_by_name(config.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = mlflow.create_experiment(
            config.experiment, artifact_location=_artifact_uri(config.artifact_location)
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


_parent_run_id: str | None = None  # set while a pipeline runs its steps (process-wide)


@contextmanager
def child_runs_of(run_id: str) -> Iterator[None]:
    """Make every top-level run opened inside (by any thread) a child of run `run_id`."""
    global _parent_run_id
    before, _parent_run_id = _parent_run_id, run_id
    try:
        yield
    finally:
        _parent_run_id = before


@contextmanager
def tracked_run(
    config: TrackingConfig,
    run_name: str,
    params: BaseModel | dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    nested: bool = False,
) -> Iterator[Any]:
    """Open an MLflow run with lineage tags (git commit plus the caller's) and flat params;
    `nested` opens it as a child of the active run (a pretraining stage under its run)."""
    import mlflow

    setup_tracking(config)
    all_tags = {"arvid.git_commit": git_commit(), **(tags or {})}
    if not nested and _parent_run_id is not None and mlflow.active_run() is None:
        all_tags.setdefault("mlflow.parentRunId", _parent_run_id)  # a step of a pipeline run
    with mlflow.start_run(run_name=run_name, tags=all_tags, nested=nested) as run:
        if params is not None:
            data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
            # MLflow caps a param value at 6000 chars; long lists are truncated rather than failing.
            mlflow.log_params({k: str(v)[:6000] for k, v in flatten(data).items()})
        yield run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(local_path: str | Path, artifact_path: str | None = None) -> None:
    """Attach a local file to the active run."""
    import mlflow

    mlflow.log_artifact(str(local_path), artifact_path=artifact_path)


def set_tags(tags: dict[str, str]) -> None:
    """Set tags on the active run."""
    import mlflow

    mlflow.set_tags(tags)
