"""Cross-entropy over a large vocabulary without the whole (rows × vocab) float32 logits.

A 32 × 1,280-token batch with a 64K vocabulary has 2.6G logits: 10.5 GB in float32, twice that
with their gradient. Here the output head runs over `chunk_rows` rows at a time and each chunk is
recomputed in the backward pass (activation checkpointing), so at most one chunk of logits is alive.
The result equals `F.cross_entropy(hidden @ weight.T, targets)` (test: tests/models/generator/).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_nll_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = hidden @ weight.T  # (rows, V)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # a stable log-softmax; float32 and float64 stay as they are
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int = 8192,
) -> torch.Tensor:
    """Mean cross-entropy (nats) of `hidden` (..., C) projected by `weight` (V, C) against
    `targets` (...), computed `chunk_rows` rows at a time."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows}: must be at least 1")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # (R, C)
    flat_targets = targets.reshape(-1)  # (R,)
    if flat_hidden.shape[0] != flat_targets.shape[0]:
        raise ValueError(
            f"hidden has {flat_hidden.shape[0]} rows, targets {flat_targets.shape[0]}: they must match"
        )
    total = flat_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_hidden.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        if torch.is_grad_enabled() and (flat_hidden.requires_grad or weight.requires_grad):
            part = checkpoint(
                _chunk_nll_sum, flat_hidden[rows], weight, flat_targets[rows], use_reentrant=False
            )
        else:
            part = _chunk_nll_sum(flat_hidden[rows], weight, flat_targets[rows])
        total = total + part
    return total / max(1, flat_targets.shape[0])
