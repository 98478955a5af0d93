"""Generator: one group-causal transformer and its schedules.

Names load from their submodule on first use, so that `models.generator.config` (the configs,
pydantic only) imports without torch; `from models.generator import Generator` works as usual.
"""

from __future__ import annotations

from models.lazy_exports import lazy_exports

_SUBMODULE_OF = {
    "ErrorCorrectionConfig": "config",
    "FrameMaskConfig": "config",
    "GeneratorConfig": "config",
    "LongContextConfig": "config",
    "ScheduleConfig": "config",
    "VideoARConfig": "config",
    "FARConfig": "config",
    "FAR": "far",
    "FARSample": "far_sampling",
    "predict_frames": "far_sampling",
    "sample_far": "far_sampling",
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
__getattr__, __dir__ = lazy_exports(__name__, globals(), _SUBMODULE_OF)
