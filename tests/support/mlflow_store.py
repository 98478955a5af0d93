"""Fresh, empty MLflow sqlite stores for tests, copied from one made once per session.

Opening a new sqlite tracking store runs all of MLflow's schema migrations: 1.2-2.9 s on this
project's 2-core machines, once for every store a test makes. A copy of a store whose tables are
made opens in ~0.05 s and is the same empty store, so every test still gets one of its own.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_template: Path | None = None


def _empty_store() -> Path:
    """The session's migrated, empty store (made on first use, removed at exit)."""
    global _template
    if _template is None:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="arvid-mlflow-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # makes the tables
        _template = path
    return _template


def fresh_store_uri(path: Path) -> str:
    """The sqlite URI of a new empty store at `path` (its folder is made; `path` must not exist)."""
    if path.exists():
        raise FileExistsError(f"{path}: a store is already there; a fresh one needs a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_store(), path)
    return f"sqlite:///{path}"
