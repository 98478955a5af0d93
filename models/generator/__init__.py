"""Generator: one group-causal transformer and its schedules.

Names load from their submodule on first use, so that `models.generator.config` (the configs,
pydantic only) imports without torch; `from models.generator import Generator` works as usual.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_SUBMODULE_OF = {
    "ErrorCorrectionConfig": "config",
    "FrameMaskConfig": "config",
    "GeneratorConfig": "config",
    "LongContextConfig": "config",
    "ScheduleConfig": "config",
    "VideoARConfig": "config",
    "KVCache": "kv_cache",
    "bits_per_token": "loss",
    "evaluate_bits_per_token": "loss",
    "sequence_loss": "loss",
    "train_step": "loss",
    "SampleResult": "sampling",
    "generate": "sampling",
    "guide": "sampling",
    "sample_logits": "sampling",
    "Schedule": "schedules",
    "build_schedule": "schedules",
    "frame": "schedules",
    "nbp": "schedules",
    "ntp": "schedules",
    "par": "schedules",
    "Generator": "transformer",
    "VideoAR": "videoar",
    "generate_videoar": "videoar",
}

__all__ = sorted(_SUBMODULE_OF)


def __getattr__(name: str) -> Any:
    """Import `name` from its submodule on first access (PEP 562)."""
    submodule = _SUBMODULE_OF.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULE_OF))
