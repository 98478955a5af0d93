"""FAR's token layout: which frames enter at full resolution, which compressed, and who sees whom.

A sequence holds *items*: one frame at full resolution (``patch`` cells per token side) or one
frame compressed (``patch * long_patch`` cells per side, FAR's long-term context). Compressed
items come first (frame order), then full ones (frame order); each item is one group.

The visibility rule, the same in training, in the exact teacher-forced layout and in the KV cache:
- a full query of frame j sees every frame f <= j once: at full resolution when f lies in its
  short window (j - f < short_window) and that full item is in the sequence, else compressed;
- a compressed query of frame j sees the compressed items of frames <= j only.
FAR's training layout holds frames [T - w, T) at full resolution and [0, T - w) compressed. The
exact layout (``full_from=0``) holds every frame at full resolution as well: each item then sees
exactly what it saw when the sampler wrote it to the KV cache.

FlexRoPE: positions are true (t, h, w) coordinates (a token's centre on the latent grid), and at
test time a bias ``-decay * (query frame - key frame)`` lowers attention to distant frames.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from einops import rearrange

from models.generator.config import FARConfig


@dataclass(frozen=True)
class FARLayout:
    """Index tensors of one FAR sequence over ``num_frames`` frames."""

    num_frames: int
    full_from: int  # first frame held at full resolution
    coarse_until: int  # frames [0, coarse_until) are held compressed
    frame: torch.Tensor  # (L,) long: the latent frame of each token
    coarse: torch.Tensor  # (L,) bool: a compressed (long-term) token
    coords: torch.Tensor  # (L, 3) float: (t, h, w) centre of each token on the latent grid
    group: torch.Tensor  # (L,) long: one group per item, in sequence order
    visibility: torch.Tensor  # (1, L, L) bool: the rule of the module docstring

    @property
    def num_tokens(self) -> int:
        """L, the tokens of the sequence (class token excluded)."""
        return int(self.frame.numel())

    @property
    def num_coarse_tokens(self) -> int:
        """Compressed tokens, which lead the sequence."""
        return int(self.coarse.sum())

    def to(self, device: torch.device | str) -> FARLayout:
        """The same layout with its tensors on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return FARLayout(
            **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()}
        )


def token_coords(frames: torch.Tensor, rows: int, cols: int, cells: int) -> torch.Tensor:
    """(F,) frame ids -> (F*rows*cols, 3) float (t, h, w) centres of tokens ``cells`` cells wide."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    centre = (cells - 1) / 2
    hw = torch.stack([r.flatten() * cells + centre, c.flatten() * cells + centre], dim=1).float()
    t = frames.float().repeat_interleave(rows * cols)[:, None]
    return torch.cat([t, hw.repeat(frames.numel(), 1)], dim=1)


def coarse_until(num_frames: int, short_window: int | None) -> int:
    """Frames [0, n) that a sequence of ``num_frames`` frames holds compressed."""
    return 0 if short_window is None else max(0, num_frames - short_window)


def visibility_rule(
    q_frame: torch.Tensor,
    q_coarse: torch.Tensor,
    k_frame: torch.Tensor,
    k_coarse: torch.Tensor,
    full_present: torch.Tensor,
    short_window: int | None,
) -> torch.Tensor:
    """(Lq,), (Lk,) frames and kinds -> (Lq, Lk) bool: the rule of the module docstring.
    full_present: (F,) bool, whether frame f's full item is among the keys."""
    qf, kf = q_frame[:, None], k_frame[None, :]
    past = kf <= qf
    if short_window is None:
        in_window = torch.ones_like(past)
    else:
        in_window = (qf - kf) < short_window
    see_full = ~k_coarse[None, :] & in_window
    see_coarse = k_coarse[None, :] & ~(full_present[k_frame][None, :] & in_window)
    full_query = past & (see_full | see_coarse)
    coarse_query = past & k_coarse[None, :]
    return torch.where(q_coarse[:, None], coarse_query, full_query)


def far_layout(config: FARConfig, num_frames: int, full_from: int | None = None) -> FARLayout:
    """The layout of ``num_frames`` frames: compressed [0, T - w), full [full_from, T).
    full_from defaults to FAR's training layout (T - w); 0 gives the exact layout."""
    until = coarse_until(num_frames, config.short_window)
    full_from = until if full_from is None else full_from
    if not 0 <= full_from <= until:
        raise ValueError(
            f"far layout of {num_frames} frames: full_from {full_from} must lie in [0, {until}] "
            "(every frame needs a full or a compressed item)"
        )
    side = config.patch * config.long_patch
    coarse_frames = torch.arange(until)
    full_frames = torch.arange(full_from, num_frames)
    n_long, n_full = config.long_tokens_per_frame, config.tokens_per_frame
    frame = torch.cat(
        [coarse_frames.repeat_interleave(n_long), full_frames.repeat_interleave(n_full)]
    )
    coarse = torch.cat(
        [
            torch.ones(until * n_long, dtype=torch.bool),
            torch.zeros(len(full_frames) * n_full, dtype=torch.bool),
        ]
    )
    coords = torch.cat(
        [
            token_coords(coarse_frames, *config.long_grid, side),
            token_coords(full_frames, *config.full_grid, config.patch),
        ]
    )
    items = torch.arange(until + len(full_frames))
    group = torch.cat(
        [items[:until].repeat_interleave(n_long), items[until:].repeat_interleave(n_full)]
    )
    full_present = torch.zeros(num_frames, dtype=torch.bool)
    full_present[full_from:] = True
    visible = visibility_rule(frame, coarse, frame, coarse, full_present, config.short_window)
    return FARLayout(
        num_frames=num_frames,
        full_from=full_from,
        coarse_until=until,
        frame=frame,
        coarse=coarse,
        coords=coords,
        group=group,
        visibility=visible[None],
    )


def temporal_bias(
    visible: torch.Tensor, q_frame: torch.Tensor, k_frame: torch.Tensor, decay: float
) -> torch.Tensor:
    """FlexRoPE's test-time decay: (…, Lq, Lk) bool visibility -> float bias, 0 at distance 0,
    ``-decay`` per frame of distance, -inf where hidden."""
    distance = (q_frame[:, None] - k_frame[None, :]).float()  # (Lq, Lk), >= 0 where visible
    return torch.where(visible, -decay * distance, float("-inf"))


def patchify(latent: torch.Tensor, cells: int) -> torch.Tensor:
    """(B, D, T, H, W) -> (B, T, (H/c)*(W/c), D*c*c) tokens of ``cells`` x ``cells`` cells."""
    return rearrange(latent, "b d t (h p) (w q) -> b t (h w) (d p q)", p=cells, q=cells)


def unpatchify(tokens: torch.Tensor, cells: int, rows: int) -> torch.Tensor:
    """(B, T, rows*cols, D*c*c) -> (B, D, T, rows*c, cols*c); the inverse of ``patchify``."""
    return rearrange(tokens, "b t (h w) (d p q) -> b d t (h p) (w q)", h=rows, p=cells, q=cells)
