"""Load a trained tokenizer by registry alias, version, run URI, storage URI or local folder.

    load_tokenizer("models:/arvid-tokenizer@champion")
    load_tokenizer("models:/arvid-tokenizer/3")
    load_tokenizer("runs:/<run id>/tokenizer")
    load_tokenizer(".arvid/checkpoints/tokenizer/demo-<key>/step-00000300")   # a checkpoint too
    load_tokenizer("s3://bucket/models/tokenizer")

A model directory is config.json + model.safetensors: the module is rebuilt from the JSON config
and the weights are read as tensors, so loading never unpickles code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import yaml

from models.tokenizer import VideoTokenizer, load_tokenizer_from_dir
from tasks import registry, storage, tracking
from tasks.tracking import TrackingConfig

_MODEL_FILES = ("config.json", "model.safetensors")


def _fetch_from_storage(uri: str, destination: Path) -> Path:
    for name in _MODEL_FILES:
        source = storage.join(uri, name)
        if not storage.exists(source):
            raise FileNotFoundError(f"{uri}: no {name} there — not a tokenizer model directory")
        storage.download_file(source, destination / name)
    return destination


def _check_kind(directory: Path, reference: str) -> None:
    descriptor = directory / "MLmodel"
    if not descriptor.is_file():
        return  # a plain model directory or checkpoint: config.json decides
    flavor = (yaml.safe_load(descriptor.read_text()) or {}).get("flavors", {}).get("arvid", {})
    kind = flavor.get("kind")
    if kind not in (None, "tokenizer"):
        raise ValueError(f"{reference}: is an arvid {kind!r} model, not a tokenizer")


def load_tokenizer(
    reference: str,
    device: str | torch.device = "cpu",
    tracking_config: TrackingConfig | None = None,
) -> VideoTokenizer:
    """A ready (eval-mode) VideoTokenizer from `reference`; FileNotFoundError names a missing one.

    models:/ and runs:/ references use `tracking_config`'s MLflow store when given, else the
    tracking URI already set in this process (or MLFLOW_TRACKING_URI).
    """
    if tracking_config is not None and reference.startswith(("models:/", "runs:/")):
        tracking.setup_tracking(tracking_config)
    with tempfile.TemporaryDirectory(prefix="arvid-tokenizer-") as tmp:
        if storage.is_s3(reference):
            directory = _fetch_from_storage(reference, Path(tmp))
        else:
            try:
                directory = registry.download_model_dir(reference, Path(tmp))
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"tokenizer {reference!r} not found: {exc}") from exc
        _check_kind(directory, reference)
        for name in _MODEL_FILES:
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"tokenizer {reference!r}: {directory} holds no {name} — not a model directory"
                )
        tokenizer = load_tokenizer_from_dir(directory, device=device)
    return tokenizer.eval()
