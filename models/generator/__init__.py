"""Generator: one group-causal transformer and its schedules."""

from models.generator.kv_cache import KVCache
from models.generator.loss import (
    bits_per_token,
    evaluate_bits_per_token,
    sequence_loss,
    train_step,
)
from models.generator.sampling import SampleResult, generate, guide, sample_logits
from models.generator.schedules import (
    Schedule,
    ScheduleConfig,
    build_schedule,
    frame,
    nbp,
    ntp,
    par,
)
from models.generator.transformer import Generator, GeneratorConfig

__all__ = [
    "Generator",
    "GeneratorConfig",
    "KVCache",
    "SampleResult",
    "Schedule",
    "ScheduleConfig",
    "bits_per_token",
    "build_schedule",
    "evaluate_bits_per_token",
    "frame",
    "generate",
    "guide",
    "nbp",
    "ntp",
    "par",
    "sample_logits",
    "sequence_loss",
    "train_step",
]
