"""The MLflow model registry: log a model directory (safetensors + JSON config), register it, resolve references.

Models are stored as plain files with an MLmodel descriptor of arvid's own flavour, so loading
never unpickles code; arvid's loaders rebuild modules from config.json and model.safetensors.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

TOKENIZER_MODEL = "arvid-tokenizer"
GENERATOR_MODEL = "arvid-generator"


def _write_mlmodel(directory: Path, kind: str) -> None:
    descriptor = {
        "artifact_path": directory.name,
        "flavors": {
            "arvid": {"kind": kind, "weights": "model.safetensors", "config": "config.json"}
        },
    }
    (directory / "MLmodel").write_text(yaml.safe_dump(descriptor, sort_keys=True))


def log_model_dir(model_dir: str | Path, artifact_path: str, kind: str) -> str:
    """Attach a saved model directory to the active MLflow run; returns its runs:/ URI."""
    import mlflow

    model_dir = Path(model_dir)
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(
                f"{model_dir / name}: a model directory needs config.json and model.safetensors"
            )
    _write_mlmodel(model_dir, kind)
    mlflow.log_artifacts(str(model_dir), artifact_path)
    return f"runs:/{mlflow.active_run().info.run_id}/{artifact_path}"


def register(
    source_uri: str, name: str, run_id: str, tags: dict[str, str], alias: str | None = None
) -> str:
    """Create a model version of `name` from a runs:/ URI, tag it, optionally alias it; returns the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = client.create_model_version(name, source=source_uri, run_id=run_id, tags=tags)
    if alias is not None:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def pin_version(reference: str) -> tuple[str, str, str | None]:
    """models:/name@alias | models:/name/N | models:/name[/latest] -> (name, version, run id).

    Raises FileNotFoundError naming the reference when the model, version or alias is missing.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    body = reference[len("models:/") :]
    client = MlflowClient()
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            found = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = body.partition("/")
            if version in ("", "latest"):
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise FileNotFoundError(
                        f"{reference}: registered model {name!r} has no versions — train and register a tokenizer first"
                    )
                found = max(versions, key=lambda v: int(v.version))
            else:
                found = client.get_model_version(name, version)
    except MlflowException as exc:
        raise FileNotFoundError(
            f"{reference}: no such registered model, version or alias ({exc.message}) — "
            "check --tokenizer and the tracking URI"
        ) from exc
    return name, str(found.version), found.run_id


def download_model_dir(reference: str, destination: str | Path | None = None) -> Path:
    """Fetch a model directory by models:/name@alias, models:/name/version or runs:/id/path."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not reference.startswith(("models:/", "runs:/")):
        path = Path(reference)
        if path.is_dir():
            return path
        raise FileNotFoundError(
            f"{reference}: not a models:/ or runs:/ reference, nor a local model directory"
        )
    target = Path(destination or tempfile.mkdtemp(prefix="arvid-model-"))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(target))
        )
    except MlflowException as exc:
        raise FileNotFoundError(
            f"{reference}: no such registered model, version, alias or run artifact ({exc.message})"
        ) from exc
    if not (local / "config.json").is_file():
        raise FileNotFoundError(f"{reference}: resolved to {local}, which holds no config.json")
    return local
