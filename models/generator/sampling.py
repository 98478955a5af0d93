"""Sampling: one forward per group over a KV cache, with classifier-free guidance.

Each step embeds the inputs of the next group (built from the tokens just sampled), runs them
through the model against the cache, and samples every position of the group at once. With
guidance, the batch holds a conditional and an unconditional half (null class), each in its own
rows of the cache, so one forward serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from models.generator.schedules import Schedule
from models.generator.static_decode import DECODE_MODES, DecodeMode, StaticDecoder, decoder_for
from models.generator.transformer import Generator

CfgForm = Literal["classic", "var"]  # classic: u + s(c - u) (PAR, LlamaGen); var: (1 + t)c - t·u


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, form: CfgForm) -> torch.Tensor:
    """Combine conditional and unconditional logits; classic scale 1 and var scale 0 give cond."""
    if form == "classic":
        return uncond + scale * (cond - uncond)
    if form == "var":
        return (1 + scale) * cond - scale * uncond
    raise ValueError(f"unknown CFG form {form!r}; use 'classic' or 'var'")


def draw(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(M, K) logits -> (M,) indices drawn from softmax(logits), by inverse CDF.

    One uniform per row and a cumulative sum: on the CPU this is ~20× cheaper per step than
    torch.multinomial or a Gumbel/exponential race, which draw K random numbers per row.
    """
    cdf = (
        (logits - logits.amax(dim=-1, keepdim=True)).exp_().cumsum_(dim=-1)
    )  # (M, K), unnormalised
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, generator=generator) * cdf[:, -1:]
    # right=True: the first index whose cdf exceeds u, so zero-weight tokens are never drawn.
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(M, V) logits -> (M,) token ids, each position filtered and sampled on its own."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # A bf16 cumulative sum has 8 bits: over 4,096 equal codes it ties runs of them, and the
    # draw only ever picks the first of a run (768 of 4,096 codes drawn). Draw in float32.
    logits = logits.float()
    if temperature != 1:
        logits = logits / temperature
    if top_k is None and top_p is None:
        return draw(logits, generator)
    if top_k is not None and top_k < logits.shape[-1]:
        values, ids = logits.topk(top_k, dim=-1)  # (M, k), sorted: a partial sort only
    else:
        values, ids = logits.sort(dim=-1, descending=True)  # (M, V)
    if top_p is not None and top_p < 1:
        probs = torch.softmax(values, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # keeps the first token always
        values = values.masked_fill(mass_before > top_p, float("-inf"))
    return ids.gather(-1, draw(values, generator)[:, None]).squeeze(-1)


def check_decode_mode(decode: str) -> None:
    """Raise on a decode mode the samplers do not know."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r}: choose one of {', '.join(DECODE_MODES)}")


def static_decoder(
    model: Generator, batch_size: int, num_positions: int, decode: DecodeMode
) -> StaticDecoder | None:
    """The reusable fixed-shape decoder for ``decode``, or None for eager decoding."""
    if decode == "eager":
        return None
    return decoder_for(model, batch_size, num_positions, decode)


@dataclass
class SampleResult:
    """What ``generate`` returns."""

    tokens: torch.Tensor  # (B, T, H, W) long token grid
    steps: int  # model forwards (= sampled groups)
    videos: Any = None  # tokenizer.decode_indices(tokens) when a tokenizer was given
    logits: torch.Tensor | None = None  # (B, N, V) guided logits in schedule order, on request


@torch.no_grad()
def generate(
    model: Generator,
    schedule: Schedule,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
    cfg_scale: float | Sequence[float] | None = None,
    cfg_form: CfgForm = "classic",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    context: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tokenizer: Any = None,
    return_logits: bool = False,
    decode: DecodeMode = "eager",
) -> SampleResult:
    """Sample (B, T, H, W) token grids group by group; optionally decode them to videos.

    labels: (B,) class ids, or None for unconditional (then give batch_size).
    cfg_scale: None = no guidance (no unconditional half); a float, or one per group (e.g. a
    ramp), guides with the null class in the form ``cfg_form``.
    context: (B, Tc, H, W) given leading frames (frame prediction); they are prefilled in the
    first forward and never resampled. Tc must end on a group boundary.
    generator: a torch.Generator on the model's device, for reproducible draws.
    decode: "eager" runs the model's forward per group; "static", "graph" and "compiled" run
    every group after the first as a fixed-shape step, captured once per group size and
    replayed (static_decode.py). All give the same tokens for the same seed.
    """
    check_decode_mode(decode)
    schedule.check_learned_inputs(model.config.max_learned_inputs)
    device = model.head.weight.device
    was_training = model.training
    model.eval()  # label dropout must not touch sampling
    try:
        starts = schedule.group_start.tolist()  # host-side bounds: no device sync per step
        schedule = schedule.to(device)
        if labels is None:
            if batch_size is None:
                raise ValueError("generate needs labels or batch_size")
            labels = torch.full((batch_size,), model.null_class, device=device)
        labels = labels.to(device)
        B, N, V = labels.shape[0], schedule.num_tokens, model.config.vocab_size
        guided = cfg_scale is not None
        if guided:
            null = torch.full_like(labels, model.null_class)
            labels = torch.cat([labels, null])  # rows [0, B) conditional, [B, 2B) unconditional
            scales = (
                [cfg_scale] * schedule.num_steps
                if isinstance(cfg_scale, int | float)
                else list(cfg_scale)
            )
            if len(scales) != schedule.num_steps:
                raise ValueError(
                    f"cfg_scale has {len(scales)} entries, the schedule {schedule.num_steps} groups"
                )

        sequence = torch.zeros(B, N, dtype=torch.long, device=device)  # targets in schedule order
        known = 0  # positions given as context
        if context is not None:
            grid = torch.zeros(B, *schedule.grid, dtype=torch.long, device=device)
            grid[:, : context.shape[1]] = context.to(device)
            known = schedule.positions_before_frame(context.shape[1])
            sequence[:, :known] = schedule.tokens_to_sequence(grid)[:, :known]
        first_group = starts.index(known)

        decoder = static_decoder(model, labels.shape[0], N, decode)
        cache = decoder.reset() if decoder else model.new_cache(labels.shape[0], N)
        logits_out = torch.zeros(B, N, V, device=device) if return_logits else None
        steps = 0
        for g in range(first_group, schedule.num_steps):
            s, e = starts[g], starts[g + 1]
            chunk = 0 if g == first_group else s  # the first forward also carries class + context
            ids = schedule.input_ids(sequence, V, chunk, e)  # (B, e - chunk)
            if guided:
                ids = torch.cat([ids, ids])  # both halves read the same tokens
            if decoder is not None and chunk > 0:
                logits = decoder.step(ids, schedule.coords[s:e])  # (B or 2B, e - s, V)
            else:
                logits = model(
                    ids,
                    schedule.coords[chunk:e],
                    schedule.group[chunk:e],
                    labels if chunk == 0 else None,
                    cache=cache,
                    start=chunk,
                    logits_from=s - chunk,
                )  # (B or 2B, e - s, V)
            steps += 1
            if guided:
                cond, uncond = logits.chunk(2)
                logits = guide(cond, uncond, float(scales[g]), cfg_form)
            if logits_out is not None:
                logits_out[:, s:e] = logits
            picked = sample_logits(logits.reshape(-1, V), temperature, top_k, top_p, generator)
            sequence[:, s:e] = picked.view(B, e - s)

        tokens = schedule.sequence_to_tokens(sequence)  # (B, T, H, W)
        videos = tokenizer.decode_indices(tokens) if tokenizer is not None else None
        return SampleResult(tokens=tokens, steps=steps, videos=videos, logits=logits_out)
    finally:
        model.train(was_training)
