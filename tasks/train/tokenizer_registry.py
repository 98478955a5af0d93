"""Load a trained tokenizer by registry alias, version, run URI, storage URI or local folder.

    load_tokenizer("models:/arvid-tokenizer@champion")
    load_tokenizer("models:/arvid-tokenizer/3")
    load_tokenizer("models:/arvid-tokenizer")                                  # the newest version
    load_tokenizer("runs:/<run id>/tokenizer")
    load_tokenizer(".arvid/checkpoints/tokenizer/demo-<key>/step-00000300")   # a checkpoint too:
                                                     # its last-step weights, not ema.safetensors
    load_tokenizer("s3://bucket/models/tokenizer")

A model directory is config.json + model.safetensors: the module is rebuilt from the JSON config
and the weights are read as tensors, so loading never unpickles code. References are resolved by
`tasks.registry.resolve_model`, the one resolver every loader shares.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from models.tokenizer import VideoTokenizer, load_tokenizer_from_dir
from tasks import registry, tracking
from tasks.tracking import TrackingConfig


def load_tokenizer(
    reference: str,
    device: str | torch.device = "cpu",
    tracking_config: TrackingConfig | None = None,
) -> VideoTokenizer:
    """A ready (eval-mode) VideoTokenizer from `reference`; FileNotFoundError names a missing one.

    models:/ and runs:/ references use `tracking_config`'s MLflow store when given, else the
    tracking URI already set in this process (or MLFLOW_TRACKING_URI). An arvid model of another
    kind (a generator) is refused with ModelKindError.
    """
    if tracking_config is not None and reference.startswith(("models:/", "runs:/")):
        tracking.setup_tracking(tracking_config)
    with tempfile.TemporaryDirectory(prefix="arvid-tokenizer-") as tmp:
        try:
            model = registry.resolve_model(reference, Path(tmp), kind="tokenizer")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"tokenizer {reference!r} not found: {exc}") from exc
        tokenizer = load_tokenizer_from_dir(model.directory, device=device)
    return tokenizer.eval()
