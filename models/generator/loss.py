"""Teacher-forced loss in bits per token, and the train step the pretraining job calls."""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext

import torch

from models.generator.attention import Backend
from models.generator.schedules import Schedule
from models.generator.transformer import Generator

LN2 = math.log(2.0)


def sequence_loss(
    model: Generator,
    tokens: torch.Tensor,
    labels: torch.Tensor | None,
    schedule: Schedule,
    *,
    context_frames: int = 0,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Mean cross-entropy in nats over the targets of a (B, T, H, W) token batch; targets in
    the first ``context_frames`` frames (given at sampling time) are left out."""
    schedule.check_learned_inputs(model.config.max_learned_inputs)
    schedule = schedule.to(tokens.device)
    targets = schedule.tokens_to_sequence(tokens)  # (B, N)
    inputs = schedule.input_ids(targets, model.config.vocab_size)  # (B, N)
    hidden = model(
        inputs, schedule.coords, schedule.group, labels, backend=backend, return_hidden=True
    )  # (B, N, C)
    skip = schedule.positions_before_frame(context_frames) if context_frames else 0
    return model.token_loss(hidden[:, skip:], targets[:, skip:])


def bits_per_token(nats: float | torch.Tensor) -> float:
    """Nats per token -> bits per token."""
    return float(nats) / LN2


@torch.no_grad()
def evaluate_bits_per_token(
    model: Generator,
    tokens: torch.Tensor,
    labels: torch.Tensor | None,
    schedule: Schedule,
    *,
    context_frames: int = 0,
) -> float:
    """Validation NLL of one batch in bits per token (eval mode: no label dropout)."""
    was_training = model.training
    model.eval()
    try:
        nats = sequence_loss(model, tokens, labels, schedule, context_frames=context_frames)
    finally:
        model.train(was_training)
    return bits_per_token(nats)


def train_step(
    model: Generator,
    batch: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    *,
    grad_clip: float | None = 1.0,
    autocast_dtype: torch.dtype | None = None,
    context_frames: int = 0,
    backend: Backend = "auto",
) -> dict[str, float]:
    """One optimizer step on ``batch`` ({"tokens": (B, T, H, W), optional "labels": (B,)});
    returns the loss in bits per token and the gradient norm before clipping."""
    model.train()
    tokens = batch["tokens"]
    autocast = (
        torch.autocast(tokens.device.type, dtype=autocast_dtype)
        if autocast_dtype
        else nullcontext()
    )
    with autocast:
        loss = sequence_loss(
            model,
            tokens,
            batch.get("labels"),
            schedule,
            context_frames=context_frames,
            backend=backend,
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        grad_norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
        )
    optimizer.step()
    return {"loss_bits_per_token": bits_per_token(loss.detach()), "grad_norm": float(grad_norm)}
