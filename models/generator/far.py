"""FAR: frame-autoregressive generation on continuous latents with a flow-matching loss.

The core generator runs unchanged, one group per latent frame: this module supplies the token
layout (far_layout.py), the input embeddings, the flow-matching head (far_head.py) and the loss;
far_sampling.py holds the frame-by-frame sampler.

FAR's recipe (PAPERS.md), with arvid's choices where the paper leaves one:
- Flow matching: x_t = (1 - t)·x0 + t·noise, target velocity noise - x0, t logit-normal and
  drawn independently for every frame; the velocity of a frame comes from the backbone's hidden
  states of its tokens through a small adaLN MLP head conditioned on the frame's time step.
- Time-step tags on the inputs: a noisy frame adds the embedding of its t; a clean frame (a share
  ``clean_context_prob`` of training frames, and every context frame at sampling) adds a learned
  "clean" embedding instead and is left out of the loss; compressed frames add a learned
  "long-term" embedding (FAR's tags -1 and -2).
- Long short-term context: the last ``short_window`` frames enter at full resolution, older ones
  (always clean) patchified ``long_patch``× coarser per side with their own input projection.
- The class token leads the sequence (label dropout -> the null class, for CFG), as for every
  other schedule. The tokenizer's continuous latent is scaled by ``latent_scale`` on the way in.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.generator.attention import Backend
from models.generator.config import FARConfig
from models.generator.far_head import FlowHead, TimestepEmbedding
from models.generator.far_layout import (
    FARLayout,
    coarse_until,
    far_layout,
    patchify,
    temporal_bias,
    unpatchify,
)
from models.generator.transformer import Generator

CLEAN = -1.0  # the time-step tag of a clean frame (FAR's -1)


class FAR(nn.Module):
    """The generator plus FAR's input projections, time embeddings, flow head and loss."""

    def __init__(self, generator: Generator, config: FARConfig) -> None:
        super().__init__()
        self.generator = generator
        self.config = config
        # Inputs are latent patches and outputs velocities: the token embedding and the vocabulary
        # head are unused, and DDP refuses parameters that never get a gradient.
        generator.input_embedding.requires_grad_(False)
        generator.head.requires_grad_(False)
        n_embd, std = generator.config.n_embd, generator.config.init_std
        cells = config.patch * config.long_patch
        self.full_in = nn.Linear(config.latent_dim * config.patch**2, n_embd)
        self.long_in = nn.Linear(config.latent_dim * cells**2, n_embd)  # its own projection
        self.time_embedding = TimestepEmbedding(n_embd)
        self.clean_embedding = nn.Parameter(torch.randn(n_embd) * std)
        self.long_embedding = nn.Parameter(torch.randn(n_embd) * std)
        self.head = FlowHead(
            n_embd,
            config.head_hidden or n_embd,
            config.latent_dim * config.patch**2,
            config.head_layers,
        )
        self._layouts: dict[tuple[int, int | None], FARLayout] = {}

    def layout(self, num_frames: int, full_from: int | None = None) -> FARLayout:
        """The token layout of ``num_frames`` frames (cached); see far_layout.py."""
        key = (num_frames, full_from)
        if key not in self._layouts:
            self._layouts[key] = far_layout(self.config, num_frames, full_from)
        return self._layouts[key]

    # -- inputs ---------------------------------------------------------------------------
    def frame_embedding(self, times: torch.Tensor) -> torch.Tensor:
        """(…,) time steps, CLEAN for clean frames -> (…, C) embeddings."""
        emb = self.time_embedding(times.clamp(min=0))
        return torch.where((times == CLEAN)[..., None], self.clean_embedding.to(emb.dtype), emb)

    def full_tokens(self, frames: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """(B, D, F, H, W) full-resolution inputs, (B, F) time steps -> (B, F, P, C)."""
        x = self.full_in(patchify(frames, self.config.patch).to(self.full_in.weight.dtype))
        return x + self.frame_embedding(times)[:, :, None]

    def long_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, D, F, H, W) clean latents -> (B, F, P_long, C) compressed tokens."""
        cells = self.config.patch * self.config.long_patch
        x = self.long_in(patchify(frames, cells).to(self.long_in.weight.dtype))
        return x + self.long_embedding

    def to_velocity(self, hidden: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """(B, F*P, C) hidden states of full tokens, (B, F) time steps -> (B, D, F, H, W)."""
        B, F = times.shape
        time = self.frame_embedding(times).repeat_interleave(self.config.tokens_per_frame, dim=1)
        out = self.head(hidden, time.to(hidden.dtype)).view(B, F, self.config.tokens_per_frame, -1)
        return unpatchify(out.float(), self.config.patch, self.config.full_grid[0])

    # -- teacher-forced velocity ----------------------------------------------------------
    def velocity(
        self,
        full: torch.Tensor,
        times: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        compressed: torch.Tensor | None = None,
        full_from: int | None = None,
        temporal_decay: float = 0.0,
        backend: Backend = "auto",
    ) -> torch.Tensor:
        """Velocities (B, D, F, H, W) of the full-resolution frames of one sequence.

        full: (B, D, F, H, W) inputs (model units) of frames [full_from, full_from + F), noisy or
        clean; times: (B, F) their time steps, CLEAN for a clean frame. compressed: (B, D, Tc, H,
        W) clean latents of frames [0, Tc), Tc = T - short_window (None when Tc = 0).
        full_from: default T - short_window (FAR's training layout); 0 is the exact layout.
        temporal_decay: FlexRoPE's test-time bias per frame of distance (0 = off).
        """
        F_ = full.shape[2]
        n_coarse = 0 if compressed is None else compressed.shape[2]
        total = F_ + (n_coarse if full_from is None else full_from)
        layout = self.layout(total, full_from)
        if n_coarse != layout.coarse_until or F_ != total - layout.full_from:
            raise ValueError(
                f"far: {n_coarse} compressed and {F_} full frames do not fit a {total}-frame "
                f"layout holding [0, {layout.coarse_until}) compressed and [{layout.full_from}, "
                f"{total}) at full resolution (short_window {self.config.short_window})"
            )
        layout = layout.to(full.device)
        parts = [] if compressed is None else [self.long_tokens(compressed).flatten(1, 2)]
        parts.append(self.full_tokens(full, times).flatten(1, 2))
        x = torch.cat(parts, dim=1)  # (B, L, C)
        visibility = layout.visibility
        if temporal_decay:
            visibility = temporal_bias(visibility, layout.frame, layout.frame, temporal_decay)
        hidden = self.generator(
            x, layout.coords, layout.group, labels, visibility=visibility, backend=backend,
            logits_at=torch.arange(layout.num_coarse_tokens, layout.num_tokens, device=x.device),
            return_hidden=True,
        )  # fmt: skip
        return self.to_velocity(hidden, times)

    # -- loss ------------------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        clean_context: bool | None = None,
        backend: Backend = "auto",
    ) -> torch.Tensor:
        """Flow-matching loss (mean squared velocity error over the noisy frames' latents) of
        (B, D, T, H, W) continuous latents in tokenizer units, in FAR's training layout.

        clean_context (default: self.training) gives a share ``clean_context_prob`` of the
        full-resolution frames clean, left out of the loss.
        """
        cfg = self.config
        x0 = latents.float() * cfg.latent_scale
        B, _, T = x0.shape[:3]
        until = coarse_until(T, cfg.short_window)
        target_frames = x0[:, :, until:]  # (B, D, F, H, W)
        F_ = T - until
        device = x0.device
        logit = torch.randn(B, F_, device=device, generator=generator)
        t = torch.sigmoid(cfg.timestep_mean + cfg.timestep_std * logit)  # (B, F) logit-normal
        clean_context = self.training if clean_context is None else clean_context
        clean = torch.zeros(B, F_, dtype=torch.bool, device=device)
        if clean_context and cfg.clean_context_prob > 0:
            clean = torch.rand(B, F_, device=device, generator=generator) < cfg.clean_context_prob
        noise = torch.randn(target_frames.shape, device=device, generator=generator)
        tb = t[:, None, :, None, None]
        noisy = (1 - tb) * target_frames + tb * noise
        inputs = torch.where(clean[:, None, :, None, None], target_frames, noisy)
        times = torch.where(clean, torch.full_like(t, CLEAN), t)
        v = self.velocity(
            inputs, times, labels, compressed=x0[:, :, :until] if until else None, backend=backend
        )
        error = (v - (noise - target_frames)).pow(2).mean(dim=(1, 3, 4))  # (B, F)
        weight = (~clean).float()
        loss = (error * weight).sum() / weight.sum().clamp(min=1.0)
        if not until:  # no compressed frame: DDP still wants a (zero) gradient for that path
            unused = self.long_in.weight.sum() + self.long_in.bias.sum() + self.long_embedding.sum()
            loss = loss + 0.0 * unused
        return loss
