"""Load a trained generator by registry alias, version, run URI, storage URI or local folder.

    load_generator("models:/arvid-generator@champion")     # a VideoAR (next_scale) or FAR (far)
    load_generator("models:/arvid-generator/2")
    load_generator(".arvid/checkpoints/generator/<run>/01-64px-17f/step-00000060")

References are resolved by `tasks.registry.resolve_model`, the resolver every loader shares; the
module is rebuilt from config.json and the weights are read as tensors (no unpickling).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from models.generator.persist import load_generator_from_dir
from tasks import registry, tracking
from tasks.tracking import TrackingConfig


def load_generator(
    reference: str,
    device: str | torch.device = "cpu",
    tracking_config: TrackingConfig | None = None,
) -> nn.Module:
    """A ready (eval-mode) Generator, VideoAR (next-scale) or FAR (far) model from `reference`.

    An arvid model of another kind (a tokenizer) is refused with ModelKindError.
    """
    if tracking_config is not None and reference.startswith(("models:/", "runs:/")):
        tracking.setup_tracking(tracking_config)
    with tempfile.TemporaryDirectory(prefix="arvid-generator-") as tmp:
        try:
            model = registry.resolve_model(reference, Path(tmp), kind="generator")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"generator {reference!r} not found: {exc}") from exc
        generator = load_generator_from_dir(model.directory, device=device)
    return generator.eval()
