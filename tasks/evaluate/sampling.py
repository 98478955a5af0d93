"""One way to sample token clips from any arvid generator: VideoAR's next-scale sampler or the
schedule-driven sampler of the plain Generator (ntp, nbp, par, frame)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.generator.config import ScheduleConfig
from models.generator.sampling import generate
from models.generator.schedules import build_schedule
from models.generator.videoar import VideoAR, generate_videoar


@dataclass(frozen=True)
class SamplingOptions:
    """How samples are drawn (the same for every unit of one evaluation)."""

    cfg_scale: float | None = None
    temperature: float = 1.0
    top_k: int | None = None


@dataclass
class TokenSample:
    """Sampled token ids as the tokenizer decodes them, and the forwards it took."""

    indices: torch.Tensor | list[torch.Tensor]  # (B, t, h, w), or one (B, t, h_k, w_k) per scale
    steps: int


def sample_tokens(
    model: nn.Module,
    latent_shape: tuple[int, int, int],
    labels: torch.Tensor,
    options: SamplingOptions,
    schedule: ScheduleConfig | None,
    seed: int,
    context: list[torch.Tensor] | None = None,
) -> TokenSample:
    """Sample clips of `latent_shape` (t, h, w) for `labels`, continuing `context` when given.

    context: the leading latent frames' ids, one (B, Tc, h_k, w_k) tensor per scale (a single
    tensor in the list for single-scale models).
    """
    generator = torch.Generator(device=labels.device).manual_seed(seed)
    common = {
        "cfg_scale": options.cfg_scale,
        "temperature": options.temperature,
        "top_k": options.top_k,
        "generator": generator,
    }
    if isinstance(model, VideoAR):
        out = generate_videoar(model, latent_shape[0], labels, context=context, **common)
        return TokenSample(indices=out.indices, steps=out.steps)
    if schedule is None:
        raise ValueError("a plain generator samples through its schedule: none was recorded")
    built = build_schedule(schedule, latent_shape)
    given = context[0] if context is not None else None
    out = generate(model, built, labels, context=given, **common)
    return TokenSample(indices=out.tokens, steps=out.steps)
