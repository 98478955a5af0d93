"""Group-causal attention.

A query sees every key whose group id is <= its own: the condition prefix (group -1), every
earlier group, and every token of its own group. Training builds that mask once per batch,
from the group ids alone: a dense boolean mask through SDPA on the CPU (FlexAttention has no CPU
backward), a FlexAttention BlockMask on CUDA. Decoding over a KV cache needs no mask at all:
a step's queries are one group, and every cached key is visible to all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

try:  # flash-attn is an optional extra (CUDA only); SDPA covers everything without it.
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the environment
    flash_attn_func = None

Backend = Literal["auto", "sdpa", "flex"]
PREFIX_GROUP = -1  # the condition prefix: visible to every query, sees only itself


@dataclass
class GroupMask:
    """A group-causal mask in the form one attention backend wants; built once per forward."""

    dense: torch.Tensor | None = None  # (Lq, Lk) bool, True = may attend
    block: BlockMask | None = None


def with_prefix(groups: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(N,) group ids -> (P+N,) group ids with the condition prefix in front."""
    prefix = torch.full((num_prefix,), PREFIX_GROUP, dtype=groups.dtype, device=groups.device)
    return torch.cat([prefix, groups])


def dense_group_mask(query_groups: torch.Tensor, key_groups: torch.Tensor) -> torch.Tensor:
    """(Lq,), (Lk,) group ids -> (Lq, Lk) bool mask: key group <= query group."""
    return key_groups[None, :] <= query_groups[:, None]


def flex_group_mask(groups: torch.Tensor, visibility: torch.Tensor | None = None) -> BlockMask:
    """(L,) group ids [and (B or 1, L, L) bool visibility] -> FlexAttention BlockMask; exact for
    groups that straddle its 128-token blocks, since partial blocks evaluate the mask per element."""
    length = groups.numel()
    if visibility is None:

        def group_causal(b, h, q_idx, kv_idx):
            return groups[kv_idx] <= groups[q_idx]

        return create_block_mask(
            group_causal, B=None, H=None, Q_LEN=length, KV_LEN=length, device=groups.device
        )
    per_sample = visibility.shape[0] > 1

    def group_causal_and_visible(b, h, q_idx, kv_idx):
        seen = visibility[b if per_sample else 0, q_idx, kv_idx]
        return (groups[kv_idx] <= groups[q_idx]) & seen

    return create_block_mask(
        group_causal_and_visible,
        B=visibility.shape[0] if per_sample else None,
        H=None,
        Q_LEN=length,
        KV_LEN=length,
        device=groups.device,
    )


def build_group_mask(
    groups: torch.Tensor,
    backend: Backend,
    device: torch.device,
    visibility: torch.Tensor | None = None,
) -> GroupMask:
    """The mask for a full (teacher-forced) forward over (L,) group ids, prefix included;
    an optional (B or 1, L, L) ``visibility`` hides further keys (bool: False = hidden) or, as
    floats, adds a bias to the scores (-inf = hidden; dense SDPA only)."""
    groups = groups.to(device)
    biased = visibility is not None and visibility.is_floating_point()
    if resolve_backend(backend, device) == "flex" and not biased:
        return GroupMask(block=flex_group_mask(groups, visibility))
    dense = dense_group_mask(groups, groups)  # (L, L)
    if visibility is not None:
        dense = combine_visibility(dense, visibility)  # (B or 1, 1, L, L): broadcasts over heads
    return GroupMask(dense=dense)


def combine_visibility(dense: torch.Tensor, visibility: torch.Tensor) -> torch.Tensor:
    """(Lq, Lk) bool group mask and (B or 1, Lq, Lk) visibility -> (B or 1, 1, Lq, Lk) mask:
    bool visibility hides keys; float visibility is an additive score bias (FlexRoPE's decay)."""
    if visibility.dtype == torch.bool:
        return (dense & visibility)[:, None]
    return torch.where(dense, visibility, float("-inf"))[:, None]


def resolve_backend(backend: Backend, device: torch.device) -> Literal["sdpa", "flex"]:
    """'auto' means FlexAttention on CUDA and dense-mask SDPA elsewhere."""
    if backend == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return backend


_compiled_flex = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: BlockMask) -> torch.Tensor:
    """flex_attention, compiled on CUDA (the eager version materialises all scores)."""
    global _compiled_flex
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block)
    return flex_attention(q, k, v, block_mask=block)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: GroupMask
) -> torch.Tensor:
    """(B, H, Lq, D) queries over (B, H, Lk, D) keys under a group-causal mask -> (B, H, Lq, D)."""
    if mask.block is not None:
        return _flex(q, k, v, mask.block)
    dense = mask.dense
    if dense is not None and dense.is_floating_point() and dense.dtype != q.dtype:
        dense = dense.to(q.dtype)  # SDPA wants a float bias in the queries' dtype (autocast)
    # A custom mask only: is_causal=True on top would silently intersect the two.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, g, D) queries of one group over (B, H, L, D) cached keys, no mask -> (B, H, g, D)."""
    if flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        # flash-attn wants (B, L, H, D); transposed views keep the last dim contiguous.
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)
