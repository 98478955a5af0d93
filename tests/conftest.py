"""Session-wide test set-up: isolated Prefect/MLflow homes and real services started once."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports Prefect: its home, database and settings live in a throwaway folder.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="arvid-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_API_URL"] = ""
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_HOME / 'mlflow-default.db'}"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.support.mlflow_store import fresh_store_uri  # noqa: E402
from tests.support.s3_server import s3_env, s3_server  # noqa: E402,F401  (fixtures)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server for the whole session (a flow run needs an API)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def tracking_config(tmp_path: Path):
    """A fresh MLflow sqlite store for one test."""
    from tasks.tracking import TrackingConfig

    return TrackingConfig(
        uri=fresh_store_uri(tmp_path / "mlflow.db"),
        experiment="arvid-test",
        artifact_location=str(tmp_path / "mlartifacts"),
    )


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session (start-up costs ~5 s and ~1 GB)."""
    import ray

    from tasks.ray_runtime import RayConfig, ensure_ray

    ensure_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()
