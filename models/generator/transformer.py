"""The generator: one LLaMA-style decoder that every generation schedule shares.

Sequence layout: ``[class token | N predicting positions]``. Position i of the N reads an input
(a token of an earlier group, a learned start/transition embedding, or -- for a next-scale
schedule -- any precomputed embedding) and predicts the target token ``schedule.order[i]``.
What a position may see comes only from group ids (see attention.py), and where it sits comes
only from the float (t, h, w) coordinates of its *target*, so the same weights run NTP, NBP,
PAR and frame-AR. The class token rotates by identity. Given context frames (frame prediction)
are the leading groups of the same sequence, teacher-forced: a prefix that every later group sees.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models.generator.attention import (
    Backend,
    GroupMask,
    build_group_mask,
    combine_visibility,
    decode_attention,
    dense_group_mask,
    masked_attention,
    with_prefix,
)
from models.generator.chunked_loss import chunked_cross_entropy
from models.generator.config import GeneratorConfig
from models.generator.copy_head import (
    DigitTransition,
    copy_mixture_log_prob,
    copy_mixture_log_probs,
)
from models.generator.digit_head import (
    digit_cross_entropy,
    digit_log_probs,
    digit_token_log_prob,
)
from models.generator.kv_cache import KVCache

NUM_PREFIX = 1  # the class token


class Rope3D(nn.Module):
    """Rotary embedding over float (t, h, w): a quarter of the rotated pairs for time, the rest
    split between rows and columns (FAR's 16/24/24 of a 64-dim head)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        pairs = head_dim // 2
        t_pairs = pairs // 4
        h_pairs = (pairs - t_pairs) // 2
        w_pairs = pairs - t_pairs - h_pairs
        freqs, axis = [], []
        for a, n in enumerate((t_pairs, h_pairs, w_pairs)):
            freqs.append(theta ** (-torch.arange(n, dtype=torch.float64) / n))
            axis.append(torch.full((n,), a))
        self.register_buffer("freqs", torch.cat(freqs).float(), persistent=False)  # (D/2,)
        self.register_buffer("axis", torch.cat(axis), persistent=False)  # (D/2,)

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, 3) float coordinates -> cos, sin of shape (L, D/2)."""
        angles = coords[:, self.axis].float() * self.freqs  # (L, D/2)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, D) by per-position angles (L, D/2); halves pair up as (x1, x2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-norm, 3D RoPE and a KV cache."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # QK-norm keeps attention logits bounded at large width (a known bf16 instability).
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: GroupMask | None,
        cache: KVCache | None,
        layer: int,
        start: int,
    ) -> torch.Tensor:
        """(B, L, C) -> (B, L, C); with a cache, x is written to rows [start, start+L)."""
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # (B, H, L, D)
        if cache is not None:
            k, v = cache.write(layer, start, k, v)  # (B, H, rows held, D)
        if mask is None:
            y = decode_attention(q, k, v)  # one group over committed keys: nothing to hide
        else:
            y = masked_attention(q, k, v, mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


class SwiGLU(nn.Module):
    """LLaMA's gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.n_embd, 2 * config.hidden, bias=False)  # fused: one matmul
        self.down = nn.Linear(config.hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C)."""
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: GroupMask | None,
        cache: KVCache | None,
        layer: int,
        start: int,
    ) -> torch.Tensor:
        """(B, L, C) -> (B, L, C)."""
        x = x + self.attn(self.attn_norm(x), rope, mask, cache, layer, start)
        return x + self.mlp(self.mlp_norm(x))


class Generator(nn.Module):
    """Group-causal decoder over (class token, N predicting positions) -> logits over the vocab."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        # Rows 0..V-1 embed tokens; rows V.. are the learned start/transition inputs.
        self.input_embedding = nn.Embedding(
            config.vocab_size + config.max_learned_inputs, config.n_embd
        )
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.n_embd)
        self.rope = Rope3D(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.checkpoint_blocks = False  # activation checkpointing in training (a trainer switch)
        self.norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        if config.output_head == "digits" and config.output_levels is None:
            raise ValueError(
                "output_head digits needs output_levels, the tokenizer's FSQ levels "
                "(pretraining fills them from the tokenizer)"
            )
        self.digit_levels = config.output_levels if config.output_head == "digits" else None
        width = sum(self.digit_levels) if self.digit_levels else config.vocab_size
        self.head = nn.Linear(config.n_embd, width, bias=False)
        # The copy head's gate (copy_head.py): one logit per position, from the same hidden state.
        self.copy_gate = nn.Linear(config.n_embd, 1) if config.copy_previous else None
        # ... and, for a digit head, logits from the copy source's digits (copy_head.py).
        self.digit_transition = (
            DigitTransition(self.digit_levels)
            if config.copy_previous and self.digit_levels is not None
            else None
        )
        self.apply(self._init_weights)
        if self.copy_gate is not None:
            nn.init.zeros_(self.copy_gate.bias)  # an even mixture until the data says otherwise
        if self.digit_transition is not None:
            self.digit_transition.reset_parameters()
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                # GPT-2: residual writes shrink with depth so the stream's variance stays put.
                nn.init.normal_(p, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.init_std)

    @property
    def null_class(self) -> int:
        """The class id that means 'no condition' (classifier-free guidance)."""
        return self.config.num_classes

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(
        self,
        batch_size: int,
        num_tokens: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A preallocated cache for the class token and ``num_tokens`` positions."""
        ref = self.head.weight
        c = self.config
        return KVCache(
            c.n_layer, batch_size, c.n_head, NUM_PREFIX + num_tokens, c.head_dim,
            device=device or ref.device, dtype=dtype or ref.dtype,
        )  # fmt: skip

    def condition(self, labels: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """(B,) class ids (None = unconditional) -> (B, 1, C) prefix, labels dropped in training."""
        device = self.class_embedding.weight.device
        if labels is None:
            labels = torch.full((batch_size,), self.null_class, device=device)
        if self.training and self.config.label_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.config.label_dropout
            labels = torch.where(drop, self.null_class, labels)
        return self.class_embedding(labels)[:, None, :]

    def forward(
        self,
        inputs: torch.Tensor,
        coords: torch.Tensor,
        groups: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        start: int = 0,
        logits_from: int = 0,
        visibility: torch.Tensor | None = None,
        backend: Backend = "auto",
        logits_at: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, L - logits_from, V) for L predicting positions starting at ``start``.

        inputs: (B, L) input ids (tokens, or vocab_size + k for learned input k; see
        ``Schedule.input_ids``) or (B, L, C) precomputed input embeddings.
        coords: (L, 3) float target coordinates; groups: (L,) long group ids.
        Without a cache the whole sequence is teacher-forced under the group-causal mask. With a
        cache the chunk is appended after the rows it holds (start == 0: an empty cache, and
        the class token goes first); a chunk of one group needs no mask, a chunk of several
        (the first step, a prefill of context frames) gets one.
        visibility: optional (B or 1, L, K) bool over predicting positions, False hiding key k
        from query l on top of the group-causal rule (frame masks, bounded context); K = L
        without a cache, else the predicting rows in the cache once this chunk is written.
        A float visibility is an additive bias on the attention scores instead (-inf hides;
        FlexRoPE's temporal decay), always through the dense mask.
        logits_at: optional (M,) long positions of the chunk whose logits are wanted (instead of
        ``logits_from``): positions that only feed others (e.g. context with no target) skip the
        costly head. Logits are then (B, M, V).
        return_hidden: return the normed hidden states (B, ·, C) of those rows instead of logits,
        for a loss that applies the head in chunks (chunked_loss.py).
        With ``checkpoint_blocks`` set, training recomputes each block's activations in the
        backward pass instead of keeping them (memory for compute).
        """
        x = inputs if inputs.is_floating_point() else self.input_embedding(inputs)  # (B, L, C)
        B, L, _ = x.shape
        rope = self.rope(coords)  # (L, D/2) each
        if start == 0:  # the class token leads the sequence and rotates by identity
            x = torch.cat([self.condition(labels, B).to(x.dtype), x], dim=1)  # (B, P+L, C)
            zeros = torch.zeros(NUM_PREFIX, rope[0].shape[1], device=x.device)
            rope = (torch.cat([zeros + 1, rope[0]]), torch.cat([zeros, rope[1]]))
            groups = with_prefix(groups, NUM_PREFIX)
        prefix = x.shape[1] - L  # P in the first chunk, else 0
        if visibility is not None:  # the class token sees, and is seen by, everything
            seen = True if visibility.dtype == torch.bool else 0.0  # no bias on the class token
            visibility = F.pad(visibility.to(x.device), (NUM_PREFIX, 0, prefix, 0), value=seen)

        if cache is None:
            if start != 0:
                raise ValueError("start > 0 needs a KV cache holding the earlier positions")
            offset = 0
            mask = build_group_mask(groups, backend, x.device, visibility)  # once for all layers
        else:
            offset = cache.length  # rows may have been evicted: append after what is held
            if (start == 0) != (offset == 0):
                raise ValueError(f"chunk at {start} does not fit a cache holding {offset} rows")
            if start == 0 or visibility is not None or bool(groups[0] != groups[-1]):
                # Cached keys are committed groups, all visible: mask only inside the chunk.
                dense = F.pad(dense_group_mask(groups, groups), (offset, 0), value=True)
                mask = GroupMask(
                    dense=dense if visibility is None else combine_visibility(dense, visibility)
                )
            else:
                mask = None

        recompute = self.checkpoint_blocks and cache is None and torch.is_grad_enabled()
        for layer, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, rope, mask, None, layer, offset, use_reentrant=False)
            else:
                x = block(x, rope, mask, cache, layer, offset)
        if cache is not None:
            cache.commit(offset + x.shape[1])
        x = x[:, prefix:]
        x = x[:, logits_from:] if logits_at is None else x[:, logits_at.to(x.device)]
        x = self.norm(x)  # the head is the costly part: skip unused rows
        if return_hidden:
            return x
        return self.project_to_vocab(x)  # (B, L - logits_from, V)

    def project_to_vocab(
        self, x: torch.Tensor, copy_from: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L, C) hidden states -> (B, L, V) logits (a digit head or a copy head:
        log-probabilities). copy_from: (B, L) the copy head's sources (copy_head.py), which a
        model with one needs."""
        if self.copy_gate is not None and copy_from is None:
            raise ValueError(
                "this generator has a copy head (copy_previous): its distribution needs the "
                "copy sources, copy_from (VideoAR supplies them)"
            )
        if self.digit_levels is not None:
            out = digit_log_probs(self._digit_logits(x, copy_from), self.digit_levels)
        else:
            out = self._vocab_logits(x)
        if self.copy_gate is None:
            return out
        log_probs = out if self.digit_levels is not None else F.log_softmax(out.float(), dim=-1)
        return copy_mixture_log_probs(log_probs, self.copy_gate(x).squeeze(-1), copy_from)

    def _digit_logits(self, x: torch.Tensor, copy_from: torch.Tensor | None = None) -> torch.Tensor:
        """(..., sum(levels)) digit logits, with the copy source's transition logits if any."""
        logits = self.head(x)
        if self.digit_transition is not None and copy_from is not None:
            logits = logits + self.digit_transition(copy_from).to(logits.dtype)
        return logits

    def _vocab_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, V) logits of a softmax head over every code."""
        B, L, C = x.shape
        if x.device.type != "cpu" or B * L > 64:
            return self.head(x)
        # Decoding on the CPU: MKL multiplies (V, C) @ (C, rows) much faster than
        # (rows, C) @ (C, V) for a few rows (measured 45 vs 55 ms for 16 rows of a 64k head).
        return (self.head.weight @ x.reshape(B * L, C).T).T.contiguous().view(B, L, -1)

    def token_log_prob(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        copy_from: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(...) log-probabilities of code indices (...) under the head alone (no copy gate),
        from normed hidden states (..., C); a digit head's copy-source logits included."""
        if self.digit_levels is not None:
            logits = self._digit_logits(hidden, copy_from)
            return digit_token_log_prob(logits, targets, self.digit_levels)
        log_probs = F.log_softmax(self.head(hidden).float(), dim=-1)
        return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def token_loss(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        chunk_rows: int | None = None,
        copy_from: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy (nats) of normed hidden states (..., C) (``return_hidden``)
        against code indices (...): per digit for a digit head, else over the vocabulary, in
        chunks of ``chunk_rows`` rows when given (chunked_loss.py). A copy head mixes in its
        copy sources ``copy_from`` (...) (copy_head.py); without one they are ignored."""
        if self.copy_gate is not None:
            if copy_from is None:
                raise ValueError(
                    "this generator has a copy head (copy_previous): its loss needs the copy "
                    "sources, copy_from (VideoAR supplies them)"
                )
            if chunk_rows is not None and self.digit_levels is None:
                raise ValueError(
                    "a copy head over the whole vocabulary has no chunked loss: use "
                    "output_head digits, or leave loss_chunk_rows unset"
                )
            gate = self.copy_gate(hidden).squeeze(-1)
            head = self.token_log_prob(hidden, targets, copy_from)
            return -copy_mixture_log_prob(head, gate, targets, copy_from).mean()
        if self.digit_levels is not None:
            return digit_cross_entropy(self.head(hidden), targets, self.digit_levels)
        if chunk_rows is not None:
            return chunked_cross_entropy(hidden, self.head.weight, targets, chunk_rows)
        return F.cross_entropy(self.head(hidden).flatten(0, -2).float(), targets.flatten())
