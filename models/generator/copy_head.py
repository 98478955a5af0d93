"""A copy head: mix "repeat the previous frame's token here" into the output distribution.

Video tokens repeat: on the demo's clips about half the tokens equal the token at the same position
and scale one latent frame earlier (static background, slow motion). A softmax head can only learn
that by mapping every one of 64,000 codes to itself, which tiny data never teaches. Here, as in a
pointer-generator network, a learned gate g (one logit per position, from the same hidden state as
the head) mixes a point mass on the previous frame's token into the head's distribution:

    p(code) = g * [code == previous] + (1 - g) * p_head(code)

It is still one proper distribution over the codes, so its cross-entropy is comparable with any
other model's or baseline's. Positions with no previous frame (copy source -1) use p_head alone.
The gate is what is learned: where the coarse scales of the current frame say the region did not
move, copy; elsewhere, predict.

With the per-digit head (digit_head.py) a miss is rarely far from the copy: on the demo's tokens
43% of the codes that change between frames change in one digit only, by about one level. So a
digit head also gets ``DigitTransition``: for each digit, a learned table of logits indexed by the
previous frame's digit (an L_i x L_i transition matrix, plus a row for "no previous frame"), added
to the head's digit logits. The head's distribution stays a product of digit softmaxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.tokenizer.fsq import index_digits

NO_SOURCE = -1  # a position with no previous frame to copy from
# Adam moves each table entry by about the learning rate per step, and a short run needs entries
# of several nats: the gain is a per-table learning-rate multiplier.
TABLE_GAIN = 8.0


def copy_mixture_log_prob(
    head_log_prob: torch.Tensor,
    gate_logit: torch.Tensor,
    targets: torch.Tensor,
    copy_from: torch.Tensor,
) -> torch.Tensor:
    """(...) log-probabilities of the targets under the mixture, from the head's own (...)
    log-probabilities of them, the (...) gate logits, and the (...) copy sources."""
    gate_logit = gate_logit.float()
    has_source = copy_from != NO_SOURCE
    copied = torch.where(
        targets == copy_from, F.logsigmoid(gate_logit), torch.full_like(gate_logit, -torch.inf)
    )
    mixed = torch.logaddexp(copied, F.logsigmoid(-gate_logit) + head_log_prob.float())
    return torch.where(has_source, mixed, head_log_prob.float())


def copy_mixture_log_probs(
    head_log_probs: torch.Tensor, gate_logit: torch.Tensor, copy_from: torch.Tensor
) -> torch.Tensor:
    """(..., V) log-probabilities of every code under the mixture, from the head's normalised
    (..., V) log-probabilities, (...) gate logits and (...) copy sources: for sampling."""
    gate_logit = gate_logit.float()
    has_source = copy_from != NO_SOURCE
    out = head_log_probs.float() + torch.where(
        has_source, F.logsigmoid(-gate_logit), torch.zeros_like(gate_logit)
    ).unsqueeze(-1)
    source = copy_from.clamp(min=0).unsqueeze(-1)
    at_source = out.gather(-1, source).squeeze(-1)
    boosted = torch.logaddexp(at_source, F.logsigmoid(gate_logit))
    return out.scatter(-1, source, torch.where(has_source, boosted, at_source).unsqueeze(-1))


class DigitTransition(nn.Module):
    """Per-digit logits from the copy source's digits: (...) sources -> (..., sum(levels))."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        self.levels = [int(level) for level in levels]
        # Row L_i of digit i's table is for positions with no previous frame.
        self.tables = nn.ModuleList(nn.Embedding(level + 1, level) for level in self.levels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero tables: the head starts as if it had no copy source."""
        for table in self.tables:
            nn.init.zeros_(table.weight)

    def forward(self, copy_from: torch.Tensor) -> torch.Tensor:
        has_source = (copy_from != NO_SOURCE).unsqueeze(-1)
        digits = index_digits(copy_from.clamp(min=0), self.levels)  # (..., D)
        none = torch.tensor(self.levels, device=copy_from.device)
        digits = torch.where(has_source, digits, none)
        logits = torch.cat([table(digits[..., i]) for i, table in enumerate(self.tables)], -1)
        return logits * TABLE_GAIN
