"""VideoAR: next-frame x next-scale prediction on multi-scale residual FSQ tokens.

Each latent frame is a coarse-to-fine pyramid of K scales (the tokenizer's multi-scale residual
FSQ); one decoding step predicts one scale of one frame, so a T-frame video takes T*K steps. The
core generator runs it unchanged: this module supplies the schedule (groups = (frame, scale)),
the input embeddings, the training-only perturbations, and the sampling loop.

No public code of VideoAR exists; these are the choices made here (each configurable):
- Input of group (t, k>0): the accumulated latent of scales < k of frame t, area-downsampled to
  scale k's shape and projected (VAR's rule), rebuilt from FSQ indices with the weightless
  quantizer. Input of group (t, 0): a learned frame-start embedding plus the projection of frame
  t-1's *complete* latent area-downsampled to scale 0 -- the finest residual of a frame is
  otherwise never an input anywhere. A learned scale embedding is added to every token.
- Multi-scale temporal RoPE: position (i, j) of scale k rotates as (t, i*H/h_k, j*W/w_k) on the
  finest grid, the latent frame index as time (the same coordinates in training and decoding).
- Cross-frame error correction (training): for frame t a fraction s_t = max_strength *
  min(1, t / ramp_frames) of the tokens of the first ``corrupt_scales`` scales is replaced by
  random codes; every later scale's target of that frame is re-quantized against the corrupted
  accumulation (Infinity's bitwise self-correction, per frame). The signal re-quantized is the
  clip's full quantized latent (the sum of all scales): token shards hold indices, not the
  tokenizer's continuous latent. Frames without a replaced token keep their original targets.
- Random frame mask (training): with probability ``prob`` a sample drops attention from every
  later frame to each earlier frame with probability ``drop_prob``; a frame always sees itself.
- Compressed long context: frames more than ``window`` frames behind the query keep only their
  first ``keep_scales`` scales visible. In decoding the hidden scales are evicted from the KV
  cache, so its size is bounded by (window+1) full frames plus coarse scales of older frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field

from models.generator.sampling import CfgForm, guide, sample_logits
from models.generator.schedules import Schedule
from models.generator.transformer import Generator
from models.tokenizer.multiscale import MultiScaleFSQ, area_downsample


class ErrorCorrectionConfig(BaseModel):
    """Cross-frame error correction: corrupt coarse scales with a strength ramping over frames."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    max_strength: float = Field(
        0.3, ge=0, le=1, description="fraction of tokens replaced at full ramp"
    )
    ramp_frames: int | None = Field(
        None, ge=1, description="frames to reach max_strength; None = T-1"
    )
    corrupt_scales: int = Field(
        2, ge=1, description="leading scales of each frame that are corrupted"
    )

    def strengths(self, num_frames: int) -> torch.Tensor:
        """(T,) replacement fraction per frame: 0 for the first frame, rising linearly."""
        ramp = self.ramp_frames or max(1, num_frames - 1)
        frames = torch.arange(num_frames, dtype=torch.float32)
        return self.max_strength * (frames / ramp).clamp(max=1.0)


class FrameMaskConfig(BaseModel):
    """Random frame mask: hide random earlier frames from later ones, per sample, in training."""

    model_config = ConfigDict(extra="forbid")

    prob: float = Field(0.0, ge=0, le=1, description="share of samples that get a frame mask")
    drop_prob: float = Field(0.5, ge=0, le=1, description="chance each earlier frame is hidden")


class LongContextConfig(BaseModel):
    """Frames older than `window` keep only their first `keep_scales` scales in the context."""

    model_config = ConfigDict(extra="forbid")

    window: int | None = Field(None, ge=0, description="None: every frame keeps every scale")
    keep_scales: int = Field(2, ge=1)


class VideoARConfig(BaseModel):
    """The multi-scale token layout (from the tokenizer's config) and VideoAR's switches."""

    model_config = ConfigDict(extra="forbid")

    levels: list[int] = Field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    scales: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    scale_gains: list[float] | None = None
    upsample_mode: str = "bilinear"
    latent_hw: tuple[int, int] = (16, 16)
    error_correction: ErrorCorrectionConfig = Field(default_factory=ErrorCorrectionConfig)
    frame_mask: FrameMaskConfig = Field(default_factory=FrameMaskConfig)
    long_context: LongContextConfig = Field(default_factory=LongContextConfig)


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
        n_embd = generator.config.n_embd
        self.input_proj = nn.Linear(self.quantizer.fsq.dim, n_embd, bias=False)
        self.scale_embedding = nn.Embedding(self.num_scales, n_embd)
        self.frame_start = nn.Parameter(torch.randn(n_embd) * generator.config.init_std)
        nn.init.normal_(self.scale_embedding.weight, std=generator.config.init_std)
        self.shapes = self.quantizer.scale_shapes(*config.latent_hw)
        self._schedules: dict[int, Schedule] = {}

    @property
    def num_scales(self) -> int:
        """K, the scales (steps) per frame."""
        return self.quantizer.num_scales

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one frame's pyramid."""
        return sum(h * w for h, w in self.shapes)

    def schedule(self, num_frames: int) -> Schedule:
        """The next-scale schedule for `num_frames` latent frames (cached)."""
        if num_frames not in self._schedules:
            self._schedules[num_frames] = next_scale(num_frames, self.shapes)
        return self._schedules[num_frames]

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

    def _frame_start(
        self, previous_final: torch.Tensor | None, batch: int, frames: int
    ) -> torch.Tensor:
        """(B, T', h_0*w_0, C) inputs of scale 0, from the previous frames' complete latents."""
        h0, w0 = self.shapes[0]
        base = self.frame_start + self.scale_embedding.weight[0]
        start = base.expand(batch, frames, h0 * w0, -1)
        if previous_final is None:
            return start
        b, d, t, h, w = previous_final.shape
        small = area_downsample(rearrange(previous_final, "b d t h w -> (b t) d h w"), (h0, w0))
        summary = self.input_proj(
            rearrange(small, "(b t) d h w -> b t (h w) d", b=b).to(base.dtype)
        )
        return start + summary

    def embed_inputs(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input embeddings (B, N, C) for per-scale indices of T frames."""
        self._check(indices)
        B, T = indices[0].shape[:2]
        per_scale = self.quantizer.next_scale_inputs(indices, self.config.latent_hw)  # k = 1..K-1
        final = self.quantizer.accumulate(indices, self.config.latent_hw)  # (B, D, T, H, W)
        first = self._frame_start(None, B, 1)
        if T > 1:
            first = torch.cat([first, self._frame_start(final[:, :, :-1], B, T - 1)], dim=1)
        parts = [first] + [self._project(x, k + 1) for k, x in enumerate(per_scale)]
        return torch.cat(parts, dim=2).flatten(1, 2)  # (B, T * tokens_per_frame, C)

    def group_input(self, indices: Sequence[torch.Tensor], t: int, k: int) -> torch.Tensor:
        """(B, h_k*w_k, C) inputs of group (t, k) from what is known: frames <= t, scales < k of t."""
        B = indices[0].shape[0]
        if k == 0:
            previous = None
            if t > 0:
                previous = self.quantizer.accumulate(
                    [x[:, t - 1 : t] for x in indices], self.config.latent_hw
                )
            return self._frame_start(previous, B, 1)[:, 0]
        acc = self.quantizer.accumulate(
            [x[:, t : t + 1] for x in indices[:k]], self.config.latent_hw
        )
        return self._project(self.quantizer.next_scale_input(acc, k), k)[:, 0]

    # -- training-only perturbations and masks --------------------------------------------
    def corrupt(
        self, indices: Sequence[torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Cross-frame error correction: (input indices, target indices) per scale."""
        cfg = self.config.error_correction
        B, T = indices[0].shape[:2]
        device = indices[0].device
        strength = cfg.strengths(T).to(device)[None, :, None, None]  # (1, T, 1, 1)
        signal = self.quantizer.accumulate(indices, self.config.latent_hw)  # what the tokens encode
        inputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        changed = torch.zeros(B, T, dtype=torch.bool, device=device)  # any replaced token so far
        vocab = self.quantizer.codebook_size
        for k in range(self.num_scales):
            target = indices[k]
            if k > 0 and bool(changed.any()):
                acc = self.quantizer.accumulate(inputs, self.config.latent_hw)
                _, recomputed = self.quantizer.quantize_residual(signal, acc, start_scale=k)
                target = torch.where(changed[:, :, None, None], recomputed[0], target)
            corrupted = target
            if k < cfg.corrupt_scales:
                draw = torch.rand(target.shape, device=device, generator=generator)
                noise = torch.randint(0, vocab, target.shape, device=device, generator=generator)
                replace = draw < strength
                corrupted = torch.where(replace, noise, target)
                changed |= (replace & (noise != target)).flatten(2).any(dim=2)
            inputs.append(corrupted)
            targets.append(target)
        return inputs, targets

    def frame_of_position(self, num_frames: int) -> torch.Tensor:
        """(N,) latent frame of every position."""
        return self.schedule(num_frames).coords[:, 0].long()

    def scale_of_position(self, num_frames: int) -> torch.Tensor:
        """(N,) scale index of every position."""
        sizes = torch.tensor([h * w for h, w in self.shapes])
        return torch.repeat_interleave(torch.arange(self.num_scales), sizes).repeat(num_frames)

    def long_context_visibility(self, num_frames: int) -> torch.Tensor | None:
        """(1, N, N) bool: False where a key lies in a frame past the window at a hidden scale."""
        cfg = self.config.long_context
        if cfg.window is None:
            return None
        frame = self.frame_of_position(num_frames)
        scale = self.scale_of_position(num_frames)
        too_old = frame[None, :] < frame[:, None] - cfg.window  # (Nq, Nk)
        hidden = too_old & (scale[None, :] >= cfg.keep_scales)
        return ~hidden[None]

    def frame_mask_visibility(
        self, batch: int, num_frames: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor | None:
        """(B, N, N) bool random frame mask, or None when no sample drew one."""
        cfg = self.config.frame_mask
        if cfg.prob <= 0 or num_frames < 2:
            return None
        masked = torch.rand(batch, generator=generator) < cfg.prob  # (B,)
        drop = masked[:, None] & (
            torch.rand(batch, num_frames, generator=generator) < cfg.drop_prob
        )
        if not bool(drop.any()):
            return None
        frame = self.frame_of_position(num_frames)
        earlier = frame[None, :] < frame[:, None]  # (Nq, Nk): key in a strictly earlier frame
        hidden = drop[:, frame][:, None, :] & earlier[None]  # (B, Nq, Nk)
        return (~hidden).to(device)

    # -- loss ------------------------------------------------------------------------------
    def forward(
        self,
        indices: Sequence[torch.Tensor],
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        perturb: bool | None = None,
        backend: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced (logits (B, N, V), targets (B, N)).

        perturb (default: self.training) switches on error correction and the frame mask.
        """
        perturb = self.training if perturb is None else perturb
        B, T = indices[0].shape[:2]
        inputs, targets = list(indices), list(indices)
        visibility = self.long_context_visibility(T)
        if perturb and self.config.error_correction.enabled:
            inputs, targets = self.corrupt(indices, generator)
        if perturb:
            frame_mask = self.frame_mask_visibility(B, T, generator, indices[0].device)
            if frame_mask is not None:
                visibility = (
                    frame_mask
                    if visibility is None
                    else frame_mask & visibility.to(frame_mask.device)
                )
        schedule = self.schedule(T).to(indices[0].device)
        if visibility is not None:
            visibility = visibility.to(indices[0].device)
        logits = self.generator(
            self.embed_inputs(inputs), schedule.coords, schedule.group, labels,
            visibility=visibility, backend=backend,
        )  # fmt: skip
        return logits, self.flatten(targets)

    def loss(
        self,
        indices: Sequence[torch.Tensor],
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        perturb: bool | None = None,
        from_frame: int = 0,
    ) -> torch.Tensor:
        """Mean cross-entropy (nats) over the targets of frames >= from_frame."""
        logits, targets = self(indices, labels, generator=generator, perturb=perturb)
        skip = from_frame * self.tokens_per_frame
        return F.cross_entropy(logits[:, skip:].flatten(0, 1).float(), targets[:, skip:].flatten())


def cfg_ramp(cfg_scale: float, num_scales: int, ramp: bool) -> list[float]:
    """Guidance per scale: VAR's linear ramp cfg*k/(K-1) (coarse scales unguided) or constant."""
    if not ramp or num_scales == 1:
        return [cfg_scale] * num_scales
    return [cfg_scale * k / (num_scales - 1) for k in range(num_scales)]


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
) -> VideoARSample:
    """Sample T frames scale by scale: T*K forwards over one KV cache (two halves with CFG).

    context: per-scale (B, Tc, h_k, w_k) given leading frames, prefilled in the first forward.
    With a long-context window, scales that no later query may see are evicted from the cache.
    """
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
        schedule = model.schedule(num_frames).to(device)
        per_frame = model.tokens_per_frame
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
        capacity = schedule.num_tokens  # predicting rows; new_cache adds the class token
        if window is not None:
            coarse = sum(h * w for h, w in model.shapes[: model.config.long_context.keep_scales])
            full_frames = min(num_frames, window + 1)
            capacity = full_frames * per_frame + (num_frames - full_frames) * coarse
        cache = net.new_cache(labels.shape[0], capacity)
        # (frame, scale) of each cached row, to know what to evict; the class token is (-1, -1).
        rows_frame = [-1]
        rows_scale = [-1]
        scale_of = model.scale_of_position(num_frames).tolist()
        logits_out = (
            torch.zeros(B, schedule.num_tokens, V, device=device) if return_logits else None
        )
        steps = 0
        max_len = 0

        def evict_after(frame_done: int) -> None:
            # Keys of frame f are hidden at scales >= keep_scales from queries in frames > f + window.
            if window is None:
                return
            old = frame_done - window
            if old < 0:
                return
            keep = [
                i for i, (f, s) in enumerate(zip(rows_frame, rows_scale, strict=True))
                if not (f == old and s >= model.config.long_context.keep_scales)
            ]  # fmt: skip
            if len(keep) < len(rows_frame):
                cache.keep(torch.tensor(keep, device=device))
                rows_frame[:] = [rows_frame[i] for i in keep]
                rows_scale[:] = [rows_scale[i] for i in keep]

        for t in range(known_frames, num_frames):
            for k in range(K):
                g = t * K + k
                s, e = schedule.group_bounds(g)
                if steps == 0:
                    # The first forward carries the class token and any context frames.
                    chunk_start = 0
                    prefix_inputs = (
                        model.embed_inputs([x[:, :t] for x in indices]) if t > 0 else None
                    )
                    x = model.group_input(indices, t, k)
                    x = x if prefix_inputs is None else torch.cat([prefix_inputs, x], dim=1)
                    visibility = model.long_context_visibility(num_frames)
                    if visibility is not None:
                        visibility = visibility[:, :e, :e].to(device)
                else:
                    chunk_start = s
                    x = model.group_input(indices, t, k)
                    visibility = None
                if guided:
                    x = torch.cat([x, x])
                logits = net(
                    x, schedule.coords[chunk_start:e], schedule.group[chunk_start:e],
                    labels if chunk_start == 0 else None, cache=cache, start=chunk_start,
                    logits_from=s - chunk_start, visibility=visibility,
                )  # fmt: skip
                rows_frame.extend(schedule.coords[chunk_start:e, 0].long().tolist())
                rows_scale.extend(scale_of[chunk_start:e])
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
