"""One way to sample clips from any arvid generator: VideoAR's next-scale sampler, the
schedule-driven sampler of the plain Generator (ntp, nbp, par, frame), or FAR's frame-by-frame
flow-matching sampler on continuous latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.generator.config import ScheduleConfig
from models.generator.far import FAR
from models.generator.far_sampling import sample_far
from models.generator.sampling import generate
from models.generator.schedules import build_schedule
from models.generator.videoar import VideoAR, generate_videoar


@dataclass(frozen=True)
class SamplingOptions:
    """How samples are drawn (the same for every unit of one evaluation)."""

    cfg_scale: float | None = None
    temperature: float = 1.0
    top_k: int | None = None
    ode_steps: int = 10  # FAR: Euler steps per frame


@dataclass
class TokenSample:
    """Sampled token ids (or FAR's continuous latents) as the tokenizer decodes them, and the
    forwards it took."""

    indices: torch.Tensor | list[torch.Tensor] | None  # (B, t, h, w), or (B, t, h_k, w_k) per scale
    steps: int
    latents: torch.Tensor | None = None  # FAR: (B, D, t, h, w) in tokenizer units

    def decode(self, tokenizer: Any) -> torch.Tensor:
        """The sampled clips as video (B, 3, T, H, W)."""
        if self.latents is not None:
            return tokenizer.decode(self.latents)
        return tokenizer.decode_indices(self.indices)


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
    tensor in the list for single-scale models); for FAR, one (B, D, Tc, h, w) latent tensor.
    """
    generator = torch.Generator(device=labels.device).manual_seed(seed)
    if isinstance(model, FAR):
        out = sample_far(
            model, latent_shape[0], labels, context=context[0] if context else None,
            ode_steps=options.ode_steps, cfg_scale=options.cfg_scale, generator=generator,
        )  # fmt: skip
        return TokenSample(indices=None, steps=out.forwards, latents=out.latents)
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
