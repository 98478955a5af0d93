"""A factorized output head for FSQ codes: one small softmax per FSQ digit.

An FSQ code is a mixed-radix number (index = sum_i digit_i * prod_{j<i} L_j, as the tokenizer's
quantizer numbers them), so a 64,000-code vocabulary is six digits of 8, 8, 8, 5, 5, 5 levels.
Predicting each digit with its own softmax (Infinity predicts each bit of its code the same way)
costs 39 outputs instead of 64,000, and codes that share digits share what was learned about them:
on small data the model can learn "this latent value" rather than 64,000 unrelated classes.
The distribution over codes is the product of the digits' distributions — a proper distribution,
so its cross-entropy in bits/token is comparable with any other model's or baseline's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.tokenizer.fsq import index_digits


def _split(digit_logits: torch.Tensor, levels: Sequence[int]) -> list[torch.Tensor]:
    if digit_logits.shape[-1] != sum(levels):
        raise ValueError(
            f"digit logits have {digit_logits.shape[-1]} outputs; levels {list(levels)} need "
            f"{sum(levels)}"
        )
    return list(torch.split(digit_logits.float(), list(levels), dim=-1))


def digit_log_probs(digit_logits: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """(..., sum(levels)) digit logits -> (..., prod(levels)) log-probabilities of every code.

    Usable wherever full-vocabulary logits are (sampling, top-k, guidance): they already sum to
    one under softmax."""
    parts = [F.log_softmax(part, dim=-1) for part in _split(digit_logits, levels)]
    # The first digit varies fastest in the index: build from the last digit down, so that
    # flattening (..., L_last, ..., L_0) in C order gives index order.
    out = parts[-1]
    for part in reversed(parts[:-1]):
        out = (out.unsqueeze(-1) + part.unsqueeze(-2)).flatten(-2)
    return out


def digit_token_log_prob(
    digit_logits: torch.Tensor, targets: torch.Tensor, levels: Sequence[int]
) -> torch.Tensor:
    """(...) log-probabilities of the code indices `targets` (...) under (..., sum(levels))
    digit logits: the sum over digits of each digit's log-probability."""
    digits = index_digits(targets, levels)  # (..., D)
    parts = _split(digit_logits, levels)
    return sum(
        F.log_softmax(part, dim=-1).gather(-1, digits[..., i : i + 1]).squeeze(-1)
        for i, part in enumerate(parts)
    )


def digit_cross_entropy(
    digit_logits: torch.Tensor, targets: torch.Tensor, levels: Sequence[int]
) -> torch.Tensor:
    """Mean code cross-entropy (nats) of (..., sum(levels)) digit logits against (...) code
    indices: the sum over digits of each digit's cross-entropy."""
    digits = index_digits(targets, levels).reshape(-1, len(levels))
    parts = _split(digit_logits.reshape(-1, digit_logits.shape[-1]), levels)
    total = sum(F.cross_entropy(part, digits[:, i]) for i, part in enumerate(parts))
    return total
