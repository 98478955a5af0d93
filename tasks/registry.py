"""The MLflow model registry, and the one resolver that turns any model reference into a folder.

Models are stored as plain files (model.safetensors + config.json) with an MLmodel descriptor of
arvid's own flavour naming their kind, so loading never unpickles code: arvid's loaders rebuild
modules from config.json and read the weights as tensors.

A reference is one of

    models:/<name>@<alias>       a registry alias, pinned to the version it points at now
    models:/<name>/<version>     one registered version
    models:/<name>[/latest]      the newest registered version, pinned
    runs:/<run id>/<path>        a folder of a run's artifacts
    <folder>                     a local model folder (a checkpoint folder is one too)
    s3://<bucket>/<prefix>       a model folder in object storage (through tasks.storage)

`pin_reference` first fixes what a reference means (an alias that moves mid-run must not change
what is downloaded), `fetch_model` then downloads exactly that; `resolve_model` does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from tasks import storage

TOKENIZER_MODEL = "arvid-tokenizer"
GENERATOR_MODEL = "arvid-generator"

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)
DESCRIPTOR_FILE = "MLmodel"

ModelSource = Literal["registry", "run", "folder", "storage"]

_REMEDY_REGISTRY = (
    "check the model name, version or alias, and that the tracking URI (tracking.uri or "
    "MLFLOW_TRACKING_URI) points at the store it was registered in"
)


class ModelKindError(ValueError):
    """A model folder whose MLmodel descriptor names another kind than the loader wants."""


@dataclass(frozen=True)
class PinnedModel:
    """A reference fixed to what it names now: `pinned` downloads the same files every time."""

    reference: str  # as given, e.g. models:/arvid-tokenizer@champion
    pinned: str  # models:/<name>/<version>, runs:/<id>/<path>, an absolute folder or an s3:// URI
    source: ModelSource
    name: str | None = None  # registered model name (registry references only)
    version: str | None = None
    run_id: str | None = None  # the run that logged it (registry and runs:/ references)


@dataclass(frozen=True)
class ResolvedModel:
    """A model fetched into a local folder, with where it came from and what kind it is."""

    reference: str
    pinned: str
    source: ModelSource
    name: str | None
    version: str | None
    run_id: str | None
    directory: Path  # holds config.json and model.safetensors (and MLmodel when logged)
    kind: str | None  # from the MLmodel descriptor; None for a plain folder or checkpoint


def _write_mlmodel(directory: Path, kind: str) -> None:
    descriptor = {
        "artifact_path": directory.name,
        "flavors": {"arvid": {"kind": kind, "weights": WEIGHTS_FILE, "config": CONFIG_FILE}},
    }
    (directory / DESCRIPTOR_FILE).write_text(yaml.safe_dump(descriptor, sort_keys=True))


def log_model_dir(model_dir: str | Path, artifact_path: str, kind: str) -> str:
    """Attach a saved model directory to the active MLflow run; returns its runs:/ URI."""
    import mlflow

    model_dir = Path(model_dir)
    for name in MODEL_FILES:
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
    set_alias(name, alias, str(version.version))
    return str(version.version)


def set_alias(name: str, alias: str | None, version: str) -> None:
    """Point `alias` of registered model `name` at `version` (nothing for a None alias)."""
    if alias is None:
        return
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, version)


def find_version(name: str, tags: dict[str, str]) -> str | None:
    """The newest version of `name` carrying every one of `tags`, or None (also without `name`)."""
    from mlflow import MlflowClient

    matching = [
        version
        for version in MlflowClient().search_model_versions(f"name='{name}'")
        if all(version.tags.get(key) == value for key, value in tags.items())
    ]
    return str(max(int(v.version) for v in matching)) if matching else None


# --- resolving references --------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryReference:
    """What a models:/ reference says, before anything is looked up."""

    name: str
    alias: str | None = None
    version: str | None = None  # a number; None without an alias means the newest version


def parse_registry_reference(reference: str) -> RegistryReference:
    """Split models:/<name>@<alias>, models:/<name>/<N> or models:/<name>[/latest]; ValueError if malformed."""
    body = reference[len("models:/") :].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        version: str | None = None
    else:
        name, _, version = body.partition("/")
        alias = None
    if not name or (alias is not None and not alias):
        raise ValueError(
            f"{reference}: not a model reference — write models:/<name>@<alias>, "
            "models:/<name>/<version> or models:/<name>"
        )
    if version not in (None, "", "latest") and not version.isdigit():
        raise ValueError(f"{reference}: version {version!r} must be a number or 'latest'")
    return RegistryReference(
        name=name, alias=alias, version=None if version in (None, "", "latest") else version
    )


def parse_run_reference(reference: str) -> tuple[str, str]:
    """Split runs:/<run id>/<path> into (run id, path); ValueError without a run id."""
    run_id, _, path = reference[len("runs:/") :].partition("/")
    if not run_id:
        raise ValueError(f"{reference}: not a run reference — write runs:/<run id>/<path>")
    return run_id, path


def _pin_registered(reference: str) -> PinnedModel:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    parsed = parse_registry_reference(reference)
    name = parsed.name
    client = MlflowClient()
    try:
        if parsed.alias is not None:
            found = client.get_model_version_by_alias(name, parsed.alias)
        elif parsed.version is None:
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise FileNotFoundError(
                    f"{reference}: registered model {name!r} has no versions — register one "
                    f"first, or {_REMEDY_REGISTRY}"
                )
            found = max(versions, key=lambda v: int(v.version))
        else:
            found = client.get_model_version(name, parsed.version)
    except MlflowException as exc:
        raise FileNotFoundError(
            f"{reference}: no such registered model, version or alias ({exc.message}) — "
            f"{_REMEDY_REGISTRY}"
        ) from exc
    return PinnedModel(
        reference=reference,
        # By number, not alias: an alias that moves mid-run must not change what is downloaded.
        pinned=f"models:/{name}/{found.version}",
        source="registry",
        name=name,
        version=str(found.version),
        run_id=found.run_id,
    )


def _pin_run(reference: str) -> PinnedModel:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id, _ = parse_run_reference(reference)
    try:
        MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise FileNotFoundError(
            f"{reference}: no MLflow run {run_id!r} ({exc.message}) — check the run id and that "
            "the tracking URI (tracking.uri or MLFLOW_TRACKING_URI) points at its store"
        ) from exc
    return PinnedModel(reference=reference, pinned=reference, source="run", run_id=run_id)


def pin_reference(reference: str) -> PinnedModel:
    """Fix what `reference` names now (aliases and `latest` become a version number).

    Raises FileNotFoundError naming the reference and the remedy when it names nothing, and
    ValueError when it is malformed.
    """
    if reference.startswith("models:/"):
        return _pin_registered(reference)
    if reference.startswith("runs:/"):
        return _pin_run(reference)
    if storage.is_s3(reference):
        return PinnedModel(reference=reference, pinned=reference.rstrip("/"), source="storage")
    path = Path(reference).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{reference}: no such folder, and not a models:/, runs:/ or s3:// reference — give "
            "a model folder (config.json + model.safetensors) or a registry reference"
        )
    return PinnedModel(reference=reference, pinned=str(path.resolve()), source="folder")


def _download_mlflow(pinned: PinnedModel, destination: Path) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    destination.mkdir(parents=True, exist_ok=True)
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=pinned.pinned, dst_path=str(destination)
            )
        )
    except (MlflowException, OSError) as exc:
        detail = getattr(exc, "message", None) or str(exc)
        raise FileNotFoundError(
            f"{pinned.reference}: its artifacts could not be downloaded ({detail}) — check the "
            "artifact path and that the artifact store is reachable from here"
        ) from exc


def _download_storage(pinned: PinnedModel, destination: Path, files: tuple[str, ...]) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in (*files, DESCRIPTOR_FILE):
        source = storage.join(pinned.pinned, name)
        if storage.exists(source):
            storage.download_file(source, destination / name)
    return destination


def model_kind(directory: Path) -> str | None:
    """The kind named by a folder's MLmodel descriptor (arvid flavour), or None without one."""
    descriptor = directory / DESCRIPTOR_FILE
    if not descriptor.is_file():
        return None
    flavors = (yaml.safe_load(descriptor.read_text()) or {}).get("flavors") or {}
    return (flavors.get("arvid") or {}).get("kind")


def fetch_model(
    pinned: PinnedModel,
    destination: Path,
    kind: str | None = None,
    files: tuple[str, ...] = MODEL_FILES,
) -> ResolvedModel:
    """Download exactly what `pinned` names into `destination` (a local folder is used in place).

    FileNotFoundError names the reference when a file of `files` is missing; ModelKindError when
    the descriptor names another kind than `kind`.
    """
    if pinned.source in ("registry", "run"):
        directory = _download_mlflow(pinned, destination)
    elif pinned.source == "storage":
        directory = _download_storage(pinned, destination, files)
    else:
        directory = Path(pinned.pinned)
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{pinned.reference}: the model folder holds no {', '.join(missing)} — give a folder "
            f"with {' and '.join(files)} (a saved model or a checkpoint)"
        )
    found_kind = model_kind(directory)
    if kind is not None and found_kind not in (None, kind):
        raise ModelKindError(
            f"{pinned.reference}: is an arvid {found_kind!r} model, not a {kind} — give a "
            f"{kind} reference"
        )
    return ResolvedModel(
        reference=pinned.reference,
        pinned=pinned.pinned,
        source=pinned.source,
        name=pinned.name,
        version=pinned.version,
        run_id=pinned.run_id,
        directory=directory,
        kind=found_kind,
    )


def resolve_model(
    reference: str,
    destination: Path,
    kind: str | None = None,
    files: tuple[str, ...] = MODEL_FILES,
) -> ResolvedModel:
    """Pin `reference`, then download it into `destination`; see the module docstring for forms."""
    return fetch_model(pin_reference(reference), destination, kind=kind, files=files)
