"""VideoAR: next-frame x next-scale prediction on multi-scale residual FSQ tokens.

Each latent frame is a coarse-to-fine pyramid of K scales (the tokenizer's multi-scale residual
FSQ); one decoding step predicts one scale of one frame, so a T-frame video takes T*K steps. The
core generator runs it unchanged: this module supplies the schedule (groups = (frame, scale)),
the input embeddings, the training-only perturbations, and the sampling loop.

No public code of VideoAR exists; these are the choices made here (each configurable):
- Input of group (t, k>0): the accumulated latent of scales < k of frame t, area-downsampled to
  scale k's shape and projected (VAR's rule), rebuilt from FSQ indices with the weightless
  quantizer. Input of group (t, 0): a learned frame-start embedding. A learned scale embedding
  is added to every token.
- Previous-frame context (``frame_context``): with "full" (the default) the first group of every
  frame t > 0 also carries H*W context positions whose inputs are frame t-1's *complete*
  accumulated latent (projected, plus a learned context embedding), with no target and no loss.
  They are computed in the same forward as scale 0 of frame t, so decoding still takes T*K
  steps, and they rotate as (t-1, h, w): the true coordinates of the latent they hold.
  Otherwise the finest scale of a frame is only ever a target. "pooled" (the first version,
  kept for the ablation) adds the projection of frame t-1's latent area-downsampled to scale
  0's shape to scale 0's input instead: a 1x1 average for scales starting at 1.
- Multi-scale temporal RoPE: position (i, j) of scale k rotates as (t, i*H/h_k, j*W/w_k) on the
  finest grid, the latent frame index as time (the same coordinates in training and decoding).
- Cross-frame error correction (training): see error_correction.py. Its "infinity" mode
  re-quantizes from the tokenizer's continuous latent, which the caller passes to ``forward``.
- Random frame mask (training): with probability ``prob`` a sample drops attention from every
  later frame to each earlier frame with probability ``drop_prob``; a frame always sees itself.
  Context positions count as the frame whose latent they hold (t-1) on the key side.
- Compressed long context: frames more than ``window`` frames behind the query keep only their
  first ``keep_scales`` scales visible (context positions count as the finest scale). In
  decoding the hidden rows are evicted from the KV cache, so its size is bounded by (window+1)
  full frames plus coarse scales of older frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from models.generator.config import VideoARConfig
from models.generator.copy_head import NO_SOURCE
from models.generator.error_correction import (
    corrupt_infinity,
    corrupt_legacy,
)
from models.generator.sampling import (
    CfgForm,
    check_decode_mode,
    guide,
    sample_logits,
    static_decoder,
)
from models.generator.schedules import Schedule
from models.generator.static_decode import DecodeMode
from models.generator.transformer import Generator
from models.tokenizer.multiscale import MultiScaleFSQ, area_downsample


def next_scale(num_frames: int, scale_shapes: Sequence[tuple[int, int]]) -> Schedule:
    """One group per (frame, scale): T*K steps; coordinates of coarse scales on the finest grid.

    The sequence is frame-major, then scale, then raster inside the scale, so ``order`` is the
    identity over the flattened pyramid. Inputs are embeddings built by VideoAR, not token ids.
    """
    H, W = scale_shapes[-1]
    coords, sizes = [], []
    for t in range(num_frames):
        for h_k, w_k in scale_shapes:
            i, j = torch.meshgrid(torch.arange(h_k), torch.arange(w_k), indexing="ij")
            ti = torch.full((h_k * w_k,), float(t))
            coords.append(torch.stack([ti, i.flatten() * H / h_k, j.flatten() * W / w_k], dim=1))
            sizes.append(h_k * w_k)
    sizes_t = torch.tensor(sizes)
    n = int(sizes_t.sum())
    group = torch.repeat_interleave(torch.arange(len(sizes)), sizes_t)
    group_start = torch.cat([torch.zeros(1, dtype=torch.long), sizes_t.cumsum(0)])
    return Schedule(
        name="next_scale",
        grid=(num_frames, H, W),
        order=torch.arange(n),
        group=group,
        slot=torch.arange(n) - group_start[group],
        coords=torch.cat(coords).float(),
        input_src=torch.full((n,), -1, dtype=torch.long),
        input_learned=torch.zeros(n, dtype=torch.long),  # unused: inputs are embeddings
        group_start=group_start,
    )


@dataclass(frozen=True)
class NextScaleLayout:
    """The sequence a next-scale model runs over T frames: the N predicting positions of
    ``schedule`` and, with full previous-frame context, H*W context positions leading the first
    group of every frame t > 0 (inputs: frame t-1's complete latent; no target, no loss).
    Without context positions every tensor here is the schedule's own (L = N)."""

    schedule: Schedule  # predicting positions only: steps, targets and logits live here
    coords: torch.Tensor  # (L, 3) float (t, h, w) on the finest grid; context: (t-1, h, w)
    group: torch.Tensor  # (L,) long: the decoding step of each position
    group_start: torch.Tensor  # (G+1,) long: first position of each group, then L
    context_len: torch.Tensor  # (G,) long: context positions leading each group
    frame: torch.Tensor  # (L,) long: frame whose step computes the position (query side)
    content_frame: torch.Tensor  # (L,) long: frame whose latent the position holds (key side)
    scale: torch.Tensor  # (L,) long: scale; context positions count as the finest
    predicting: torch.Tensor  # (N,) long: position in L of each predicting position

    @property
    def num_positions(self) -> int:
        """L, the positions fed to the transformer (predicting + context)."""
        return int(self.group.numel())

    @property
    def has_context(self) -> bool:
        """Whether any group carries context positions."""
        return self.num_positions > self.schedule.num_tokens

    def group_bounds(self, g: int) -> tuple[int, int, int]:
        """Positions of group g: (start, first predicting position, end)."""
        start = int(self.group_start[g])
        return start, start + int(self.context_len[g]), int(self.group_start[g + 1])

    def to(self, device: torch.device | str) -> NextScaleLayout:
        """The same layout with its tensors on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return NextScaleLayout(**{k: v.to(device) for k, v in moved.items()})


def next_scale_layout(
    num_frames: int, scale_shapes: Sequence[tuple[int, int]], frame_context: str
) -> NextScaleLayout:
    """The next-scale schedule plus, for frame_context "full", the context positions of every
    frame t > 0 in front of its scale-0 tokens (same group, so still T*K steps)."""
    schedule = next_scale(num_frames, scale_shapes)
    H, W = scale_shapes[-1]
    K = len(scale_shapes)
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    grid_hw = torch.stack([i.flatten(), j.flatten()], dim=1).float()  # (H*W, 2)
    coords, group, frame, content, scale, is_context = [], [], [], [], [], []
    for g in range(schedule.num_steps):
        t, k = divmod(g, K)
        s, e = schedule.group_bounds(g)
        if frame_context == "full" and k == 0 and t > 0:
            coords.append(torch.cat([torch.full((H * W, 1), float(t - 1)), grid_hw], dim=1))
            for out, value in ((frame, t), (content, t - 1), (scale, K - 1), (is_context, 1)):
                out.append(torch.full((H * W,), value, dtype=torch.long))
            group.append(torch.full((H * W,), g, dtype=torch.long))
        coords.append(schedule.coords[s:e])
        for out, value in ((frame, t), (content, t), (scale, k), (is_context, 0), (group, g)):
            out.append(torch.full((e - s,), value, dtype=torch.long))
    group_t = torch.cat(group)
    is_context_t = torch.cat(is_context).bool()
    sizes = torch.bincount(group_t, minlength=schedule.num_steps)
    return NextScaleLayout(
        schedule=schedule,
        coords=torch.cat(coords),
        group=group_t,
        group_start=torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]),
        context_len=torch.bincount(group_t[is_context_t], minlength=schedule.num_steps),
        frame=torch.cat(frame),
        content_frame=torch.cat(content),
        scale=torch.cat(scale),
        predicting=(~is_context_t).nonzero().squeeze(1),
    )


@dataclass
class VideoARSample:
    """What ``generate_videoar`` returns."""

    indices: list[torch.Tensor]  # per scale, (B, T, h_k, w_k)
    steps: int
    videos: Any = None
    logits: torch.Tensor | None = None  # (B, N, V) guided logits in schedule order, on request
    max_cache_len: int = 0  # most positions the KV cache held at once (class token included)


class VideoAR(nn.Module):
    """The generator plus VideoAR's input embeddings, training perturbations and masks."""

    def __init__(self, generator: Generator, config: VideoARConfig) -> None:
        super().__init__()
        self.generator = generator
        self.config = config
        self.quantizer = MultiScaleFSQ(
            config.levels, config.scales, config.scale_gains, config.upsample_mode
        )
        if self.quantizer.codebook_size != generator.config.vocab_size:
            raise ValueError(
                f"tokenizer codes ({self.quantizer.codebook_size}) != generator vocab_size "
                f"({generator.config.vocab_size})"
            )
        config.error_correction.check_scales(self.quantizer.num_scales)
        # Inputs here are embeddings built from the pyramid, never token ids: the generator's token
        # embedding is unused, and DDP refuses parameters that never get a gradient.
        generator.input_embedding.requires_grad_(False)
        n_embd = generator.config.n_embd
        std = generator.config.init_std
        self.input_proj = nn.Linear(self.quantizer.fsq.dim, n_embd, bias=False)
        self.scale_embedding = nn.Embedding(self.num_scales, n_embd)
        self.frame_start = nn.Parameter(torch.randn(n_embd) * std)
        # Tells context positions apart from frame t-1's finest-scale positions, which share
        # their coordinates.
        self.context_embedding = (
            nn.Parameter(torch.randn(n_embd) * std) if config.frame_context == "full" else None
        )
        nn.init.normal_(self.scale_embedding.weight, std=std)
        self.shapes = self.quantizer.scale_shapes(*config.latent_hw)
        self._layouts: dict[int, NextScaleLayout] = {}

    @property
    def num_scales(self) -> int:
        """K, the scales (steps) per frame."""
        return self.quantizer.num_scales

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the generator's weights, which the input embeddings are cast to: the
        wrapper's own layers may stay float32 when the generator runs in bf16."""
        return self.generator.head.weight.dtype

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one frame's pyramid (predicting positions; context positions excluded)."""
        return sum(h * w for h, w in self.shapes)

    def layout(self, num_frames: int) -> NextScaleLayout:
        """The positions fed to the transformer for `num_frames` latent frames (cached)."""
        if num_frames not in self._layouts:
            self._layouts[num_frames] = next_scale_layout(
                num_frames, self.shapes, self.config.frame_context
            )
        return self._layouts[num_frames]

    def schedule(self, num_frames: int) -> Schedule:
        """The next-scale schedule (predicting positions) for `num_frames` latent frames."""
        return self.layout(num_frames).schedule

    # -- layout ---------------------------------------------------------------------------
    def flatten(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale (B, T, h_k, w_k) indices -> (B, N) in schedule order."""
        self._check(indices)
        per_frame = [rearrange(x, "b t h w -> b t (h w)") for x in indices]
        return torch.cat(per_frame, dim=2).flatten(1)

    def unflatten(self, sequence: torch.Tensor, num_frames: int) -> list[torch.Tensor]:
        """(B, N) in schedule order -> per-scale (B, T, h_k, w_k) indices."""
        frames = sequence.view(sequence.shape[0], num_frames, self.tokens_per_frame)
        sizes = [h * w for h, w in self.shapes]
        return [
            rearrange(part, "b t (h w) -> b t h w", h=h, w=w)
            for part, (h, w) in zip(frames.split(sizes, dim=2), self.shapes, strict=True)
        ]

    def copy_source(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, N) in schedule order: the token at the same position and scale one frame earlier
        (the copy head's source, copy_head.py), NO_SOURCE in the first frame."""
        flat = self.flatten(indices)
        first = torch.full_like(flat[:, : self.tokens_per_frame], NO_SOURCE)
        return torch.cat([first, flat[:, : -self.tokens_per_frame]], dim=1)

    @property
    def copies(self) -> bool:
        """Whether the generator has a copy head, which needs ``copy_source``."""
        return self.generator.copy_gate is not None

    def _check(self, indices: Sequence[torch.Tensor]) -> None:
        if len(indices) != self.num_scales:
            raise ValueError(
                f"got {len(indices)} scales of indices, the tokenizer has {self.num_scales}"
            )
        for k, (x, shape) in enumerate(zip(indices, self.shapes, strict=True)):
            if tuple(x.shape[-2:]) != shape:
                raise ValueError(
                    f"scale {k} indices have shape {tuple(x.shape[-2:])}, expected {shape}"
                )

    # -- inputs ---------------------------------------------------------------------------
    def _project(self, latent: torch.Tensor, k: int) -> torch.Tensor:
        """(B, D, T', h_k, w_k) latent -> (B, T', h_k*w_k, C) token inputs of scale k."""
        x = self.input_proj(
            rearrange(latent, "b d t h w -> b t (h w) d").to(self.frame_start.dtype)
        )
        return x + self.scale_embedding.weight[k]

    def _context(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, D, T', H, W) complete latents -> (B, T', H*W, C) context-position inputs."""
        x = self.input_proj(
            rearrange(latent, "b d t h w -> b t (h w) d").to(self.frame_start.dtype)
        )
        return x + self.context_embedding

    def _frame_start(
        self, previous_final: torch.Tensor | None, batch: int, frames: int
    ) -> torch.Tensor:
        """(B, T', h_0*w_0, C) inputs of scale 0; "pooled" adds the previous frames' latents."""
        h0, w0 = self.shapes[0]
        base = self.frame_start + self.scale_embedding.weight[0]
        start = base.expand(batch, frames, h0 * w0, -1)
        if previous_final is None or self.config.frame_context == "full":
            return start
        b, d, t, h, w = previous_final.shape
        small = area_downsample(rearrange(previous_final, "b d t h w -> (b t) d h w"), (h0, w0))
        summary = self.input_proj(
            rearrange(small, "(b t) d h w -> b t (h w) d", b=b).to(base.dtype)
        )
        return start + summary

    def embed_inputs(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input embeddings (B, L, C) of ``layout(T)`` for per-scale indices."""
        self._check(indices)
        B, T = indices[0].shape[:2]
        per_scale = self.quantizer.next_scale_inputs(indices, self.config.latent_hw)  # k = 1..K-1
        previous = None
        if T > 1:  # the complete latent of frames 0..T-2, read by frames 1..T-1
            previous = self.quantizer.accumulate(
                [x[:, :-1] for x in indices], self.config.latent_hw
            )
        first = self._frame_start(None, B, 1)
        if previous is not None:
            first = torch.cat([first, self._frame_start(previous, B, T - 1)], dim=1)
        parts = [first] + [self._project(x, k + 1) for k, x in enumerate(per_scale)]
        pyramids = torch.cat(parts, dim=2)  # (B, T, tokens_per_frame, C)
        if previous is None or self.config.frame_context != "full":
            return pyramids.flatten(1, 2).to(self.input_dtype)
        later = torch.cat([self._context(previous), pyramids[:, 1:]], dim=2)  # (B, T-1, ., C)
        return torch.cat([pyramids[:, 0], later.flatten(1, 2)], dim=1).to(self.input_dtype)

    def group_input(self, indices: Sequence[torch.Tensor], t: int, k: int) -> torch.Tensor:
        """(B, positions of group (t, k), C) inputs from what is known: frames < t, and scales
        < k of frame t. Group (t > 0, 0) leads with its context positions under "full"."""
        return self._group_input(indices, t, k).to(self.input_dtype)

    def _group_input(self, indices: Sequence[torch.Tensor], t: int, k: int) -> torch.Tensor:
        B = indices[0].shape[0]
        if k == 0:
            if t == 0:
                return self._frame_start(None, B, 1)[:, 0]
            previous = self.quantizer.accumulate(
                [x[:, t - 1 : t] for x in indices], self.config.latent_hw
            )
            start = self._frame_start(previous, B, 1)[:, 0]
            if self.config.frame_context != "full":
                return start
            return torch.cat([self._context(previous)[:, 0], start], dim=1)
        acc = self.quantizer.accumulate(
            [x[:, t : t + 1] for x in indices[:k]], self.config.latent_hw
        )
        return self._project(self.quantizer.next_scale_input(acc, k), k)[:, 0]

    # -- training-only perturbations and masks --------------------------------------------
    def corrupt(
        self,
        indices: Sequence[torch.Tensor],
        generator: torch.Generator | None = None,
        continuous: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Cross-frame error correction: (input indices, target indices) per scale.

        continuous: (B, D, T, H, W) the tokenizer's continuous latent in code units (what its
        multi-scale FSQ quantized into ``indices``, float32 as it came out); the "infinity"
        mode needs it and raises without it, "legacy" ignores it.
        """
        cfg = self.config.error_correction
        if cfg.mode == "legacy":
            return corrupt_legacy(self.quantizer, indices, cfg, generator)
        B, T = indices[0].shape[:2]
        expected = (B, self.quantizer.fsq.dim, T, *self.config.latent_hw)
        if continuous is None:
            raise ValueError(
                "error_correction.mode 'infinity' re-quantizes targets from the tokenizer's "
                f"continuous latent: pass continuous= of shape {expected} (the tokenizer's "
                "pre-quantization latent in code units), or set error_correction.mode='legacy'"
            )
        if tuple(continuous.shape) != expected:
            raise ValueError(
                f"continuous latent of shape {tuple(continuous.shape)} does not fit the "
                f"indices: expected {expected} (B, D, T, H, W)"
            )
        return corrupt_infinity(self.quantizer, continuous.to(indices[0].device), cfg, generator)

    def frame_of_position(self, num_frames: int) -> torch.Tensor:
        """(N,) latent frame of every predicting position."""
        return self.schedule(num_frames).coords[:, 0].long()

    def scale_of_position(self, num_frames: int) -> torch.Tensor:
        """(N,) scale index of every predicting position."""
        sizes = torch.tensor([h * w for h, w in self.shapes])
        return torch.repeat_interleave(torch.arange(self.num_scales), sizes).repeat(num_frames)

    def long_context_visibility(self, num_frames: int) -> torch.Tensor | None:
        """(1, L, L) bool: False where a key lies in a frame past the window at a hidden scale."""
        cfg = self.config.long_context
        if cfg.window is None:
            return None
        layout = self.layout(num_frames)
        too_old = layout.content_frame[None, :] < layout.frame[:, None] - cfg.window  # (Lq, Lk)
        hidden = too_old & (layout.scale[None, :] >= cfg.keep_scales)
        return ~hidden[None]

    def frame_mask_visibility(
        self, batch: int, num_frames: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor | None:
        """(B, L, L) bool random frame mask, or None when no sample drew one."""
        cfg = self.config.frame_mask
        if cfg.prob <= 0 or num_frames < 2:
            return None
        masked = torch.rand(batch, generator=generator) < cfg.prob  # (B,)
        drop = masked[:, None] & (
            torch.rand(batch, num_frames, generator=generator) < cfg.drop_prob
        )
        if not bool(drop.any()):
            return None
        layout = self.layout(num_frames)
        key_frame = layout.content_frame
        earlier = key_frame[None, :] < layout.frame[:, None]  # (Lq, Lk): key strictly earlier
        hidden = drop[:, key_frame][:, None, :] & earlier[None]  # (B, Lq, Lk)
        return (~hidden).to(device)

    # -- loss ------------------------------------------------------------------------------
    def forward(
        self,
        indices: Sequence[torch.Tensor],
        labels: torch.Tensor | None = None,
        *,
        continuous: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        perturb: bool | None = None,
        backend: str = "auto",
        return_hidden: bool = False,
        return_copy_source: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Teacher-forced (logits (B, N, V), targets (B, N)) over the predicting positions
        (the normed hidden states (B, N, C) instead of logits with ``return_hidden``; and third
        with ``return_copy_source``, the copy head's sources (B, N), or None without a copy head:
        see ``copy_source``).

        perturb (default: self.training) switches on error correction and the frame mask.
        continuous: the tokenizer's continuous latent, for error correction's "infinity" mode
        (see ``corrupt``).
        """
        perturb = self.training if perturb is None else perturb
        B, T = indices[0].shape[:2]
        device = indices[0].device
        inputs, targets = list(indices), list(indices)
        visibility = self.long_context_visibility(T)
        if perturb and self.config.error_correction.enabled:
            inputs, targets = self.corrupt(indices, generator, continuous)
        if perturb:
            frame_mask = self.frame_mask_visibility(B, T, generator, device)
            if frame_mask is not None:
                visibility = (
                    frame_mask if visibility is None else frame_mask & visibility.to(device)
                )
        layout = self.layout(T).to(device)
        if visibility is not None:
            visibility = visibility.to(device)
        out = self.generator(
            self.embed_inputs(inputs), layout.coords, layout.group, labels,
            visibility=visibility, backend=backend,
            logits_at=layout.predicting if layout.has_context else None,
            return_hidden=return_hidden or self.copies,
        )  # fmt: skip
        # The copy source is what the model was shown of the previous frame (corrupted inputs
        # in training), as in sampling it is what was sampled.
        copy_from = self.copy_source(inputs) if self.copies else None
        if self.copies and not return_hidden:
            out = self.generator.project_to_vocab(out, copy_from)
        if return_copy_source:
            return out, self.flatten(targets), copy_from
        return out, self.flatten(targets)

    def loss(
        self,
        indices: Sequence[torch.Tensor],
        labels: torch.Tensor | None = None,
        *,
        continuous: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        perturb: bool | None = None,
        from_frame: int = 0,
    ) -> torch.Tensor:
        """Mean cross-entropy (nats) over the targets of frames >= from_frame."""
        hidden, targets, copy_from = self(
            indices,
            labels,
            continuous=continuous,
            generator=generator,
            perturb=perturb,
            return_hidden=True,
            return_copy_source=True,
        )
        skip = from_frame * self.tokens_per_frame
        if copy_from is not None:
            copy_from = copy_from[:, skip:]
        return self.generator.token_loss(hidden[:, skip:], targets[:, skip:], copy_from=copy_from)


def cfg_ramp(cfg_scale: float, num_scales: int, ramp: bool) -> list[float]:
    """Guidance per scale: VAR's linear ramp cfg*k/(K-1) (coarse scales unguided) or constant."""
    if not ramp or num_scales == 1:
        return [cfg_scale] * num_scales
    return [cfg_scale * k / (num_scales - 1) for k in range(num_scales)]


def cache_capacity(model: VideoAR, num_frames: int, known_frames: int = 0) -> int:
    """Most rows (class token excluded) the KV cache of ``generate_videoar`` holds at once: the
    first forward carries every given frame, and after each frame the rows that no later query
    may see (long context) are evicted."""
    layout = model.layout(num_frames)
    cfg = model.config.long_context
    first_end = layout.group_bounds(known_frames * model.num_scales)[2]
    if cfg.window is None:
        return layout.num_positions
    most = first_end
    fine = layout.scale >= cfg.keep_scales
    for t in range(known_frames, num_frames):
        written = layout.frame <= t
        evicted = fine & (layout.content_frame < t - cfg.window)
        most = max(most, int((written & ~evicted).sum()))
    return most


@torch.no_grad()
def generate_videoar(
    model: VideoAR,
    num_frames: int,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
    cfg_scale: float | None = None,
    cfg_form: CfgForm = "var",
    ramp_cfg: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    context: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    tokenizer: Any = None,
    return_logits: bool = False,
    decode: DecodeMode = "eager",
) -> VideoARSample:
    """Sample T frames scale by scale: T*K forwards over one KV cache (two halves with CFG).

    context: per-scale (B, Tc, h_k, w_k) given leading frames, prefilled in the first forward.
    With a long-context window, rows that no later query may see are evicted from the cache.
    decode: "eager", or a fixed-shape step replayed per scale ("static", "graph", "compiled";
    see static_decode.py), which gives the same tokens.
    """
    check_decode_mode(decode)
    if model.copies and decode != "eager":
        raise ValueError(
            f"decode={decode!r}: a generator with a copy head (copy_previous) decodes eagerly "
            "only; use decode='eager'"
        )
    net = model.generator
    device = net.head.weight.device
    was_training = model.training
    model.eval()
    try:
        if labels is None:
            if batch_size is None:
                raise ValueError("generate_videoar needs labels or batch_size")
            labels = torch.full((batch_size,), net.null_class, device=device)
        labels = labels.to(device)
        B, K, V = labels.shape[0], model.num_scales, net.config.vocab_size
        guided = cfg_scale is not None
        scales = cfg_ramp(cfg_scale, K, ramp_cfg) if guided else []
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, net.null_class)])
        host_layout = model.layout(num_frames)
        # Group bounds as host lists, read once: no scalar read of a tensor per step.
        starts, context_len = host_layout.group_start.tolist(), host_layout.context_len.tolist()
        bounds = [
            (a, a + c, b) for a, c, b in zip(starts[:-1], context_len, starts[1:], strict=True)
        ]
        predicting = list(pairwise(host_layout.schedule.group_start.tolist()))
        layout = host_layout.to(device)
        schedule = layout.schedule
        indices = [
            torch.zeros(B, num_frames, h, w, dtype=torch.long, device=device)
            for h, w in model.shapes
        ]
        known_frames = 0
        if context is not None:
            known_frames = context[0].shape[1]
            for k in range(K):
                indices[k][:, :known_frames] = context[k].to(device)

        window = model.config.long_context.window
        keep_scales = model.config.long_context.keep_scales
        # predicting rows; new_cache adds the class token
        capacity = cache_capacity(model, num_frames, known_frames)
        decoder = static_decoder(net, labels.shape[0], capacity, decode)
        cache = decoder.reset() if decoder else net.new_cache(labels.shape[0], capacity)
        # (content frame, scale) of each cached row, to know what to evict; class token (-1, -1).
        rows_frame = [-1]
        rows_scale = [-1]
        content_frame = layout.content_frame.tolist()
        scale_of = layout.scale.tolist()
        logits_out = (
            torch.zeros(B, schedule.num_tokens, V, device=device) if return_logits else None
        )
        steps = 0
        max_len = 0

        def evict_after(frame_done: int) -> None:
            # Rows of frame f at scales >= keep_scales are hidden from queries in frames
            # > f + window.
            if window is None:
                return
            old = frame_done - window
            if old < 0:
                return
            keep = [
                i for i, (f, s) in enumerate(zip(rows_frame, rows_scale, strict=True))
                if not (f == old and s >= keep_scales)
            ]  # fmt: skip
            if len(keep) < len(rows_frame):
                cache.keep(torch.tensor(keep, device=device))
                rows_frame[:] = [rows_frame[i] for i in keep]
                rows_scale[:] = [rows_scale[i] for i in keep]

        for t in range(known_frames, num_frames):
            for k in range(K):
                g = t * K + k
                start, first, end = bounds[g]  # context rows lead the group
                s, e = predicting[g]  # the group's predicting positions
                x = model.group_input(indices, t, k)
                if steps == 0:
                    # The first forward carries the class token and any context frames.
                    chunk_start = 0
                    if t > 0:
                        x = torch.cat([model.embed_inputs([y[:, :t] for y in indices]), x], dim=1)
                    visibility = model.long_context_visibility(num_frames)
                    if visibility is not None:
                        visibility = visibility[:, :end, :end].to(device)
                else:
                    chunk_start = start
                    visibility = None
                if guided:
                    x = torch.cat([x, x])
                if decoder is not None and chunk_start > 0:
                    logits = decoder.step(x, layout.coords[start:end], logits_from=first - start)
                else:
                    logits = net(
                        x, layout.coords[chunk_start:end], layout.group[chunk_start:end],
                        labels if chunk_start == 0 else None, cache=cache, start=chunk_start,
                        logits_from=first - chunk_start, visibility=visibility,
                        return_hidden=model.copies,
                    )  # fmt: skip
                    if model.copies:
                        h, w = model.shapes[k]
                        source = (
                            indices[k][:, t - 1].reshape(B, h * w)
                            if t > 0
                            else torch.full((B, h * w), NO_SOURCE, device=device)
                        )
                        logits = net.project_to_vocab(
                            logits, torch.cat([source, source]) if guided else source
                        )
                rows_frame.extend(content_frame[chunk_start:end])
                rows_scale.extend(scale_of[chunk_start:end])
                max_len = max(max_len, cache.length)
                steps += 1
                if guided:
                    cond, uncond = logits.chunk(2)
                    logits = guide(cond, uncond, float(scales[k]), cfg_form)
                if logits_out is not None:
                    logits_out[:, s:e] = logits
                picked = sample_logits(logits.reshape(-1, V), temperature, top_k, top_p, generator)
                h, w = model.shapes[k]
                indices[k][:, t] = picked.view(B, h, w)
                if steps == 1 and t > 0:
                    for done in range(t):
                        evict_after(done)
            evict_after(t)
        videos = tokenizer.decode_indices(indices) if tokenizer is not None else None
        return VideoARSample(
            indices=indices, steps=steps, videos=videos, logits=logits_out, max_cache_len=max_len
        )
    finally:
        model.train(was_training)
