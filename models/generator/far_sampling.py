"""FAR sampling: frame by frame, a few Euler steps of the flow ODE per frame, over one KV cache.

For frame f the cache holds exactly what FAR's layout lets a full query of frame f see: the
class token, compressed items of frames <= f - w and full items of frames (f - w, f - 1] (all of
them without a window). Each ODE step runs frame f's noisy tokens against it and is rolled back;
the finished frame is then written once more, clean (tag CLEAN), as context for later frames.
When frame g leaves the short window its full rows are evicted and its compressed item is
written, seeing only the compressed rows, so the cache grows by ``long_tokens_per_frame`` per
frame beyond the window. With guidance the batch holds a conditional and an unconditional half
(null class), each with its own cache rows. Given context frames (frame prediction) are written
through the same clean path, so a video continues exactly as if the model had made them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.generator.far import CLEAN, FAR
from models.generator.far_layout import temporal_bias, token_coords, visibility_rule
from models.generator.kv_cache import KVCache
from models.generator.transformer import NUM_PREFIX


@dataclass
class FARSample:
    """What ``sample_far`` returns."""

    latents: torch.Tensor  # (B, D, T, H, W) in tokenizer units, context frames included
    forwards: int  # model forwards (ODE steps + clean writes + compressed writes)
    max_cache_len: int  # most rows the KV cache held at once (class token included)
    # On request: (frame, t, x_t in model units (B, D, H, W), guided velocity (B, D, H, W)).
    trace: list[tuple[int, float, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class _CachedDecoder:
    """One KV cache and the (frame, compressed) identity of each row it holds."""

    def __init__(self, model: FAR, labels: torch.Tensor, num_frames: int, decay: float) -> None:
        cfg = model.config
        self.model, self.labels, self.decay = model, labels, decay
        self.device = labels.device
        window = cfg.short_window
        full_rows = (num_frames if window is None else min(num_frames, window)) + 1
        capacity = full_rows * cfg.tokens_per_frame + num_frames * cfg.long_tokens_per_frame
        self.cache: KVCache = model.generator.new_cache(labels.shape[0], capacity)
        self.row_frame: list[int] = []  # rows after the class token
        self.row_coarse: list[bool] = []
        self.forwards = 0
        self.max_len = 0

    def run(self, x: torch.Tensor, frame: int, coarse: bool, commit: bool) -> torch.Tensor:
        """Hidden states (B', P, C) of one item (frame ``frame``'s tokens, (B', P, C) inputs)
        over the cache; kept in the cache only with ``commit``."""
        cfg = self.model.config
        if coarse:
            cells = cfg.patch * cfg.long_patch
            coords = token_coords(torch.tensor([frame]), *cfg.long_grid, cells)
        else:
            coords = token_coords(torch.tensor([frame]), *cfg.full_grid, cfg.patch)
        n = coords.shape[0]
        held = self.cache.length
        visibility = self._visibility(frame, coarse, n)
        hidden = self.model.generator(
            x, coords.to(self.device), torch.zeros(n, dtype=torch.long, device=self.device),
            self.labels if held == 0 else None, cache=self.cache, start=held,
            visibility=visibility, return_hidden=True,
        )  # fmt: skip
        self.forwards += 1
        self.max_len = max(self.max_len, self.cache.length)
        if commit:
            self.row_frame += [frame] * n
            self.row_coarse += [coarse] * n
        else:
            self.cache.truncate(max(held, NUM_PREFIX))  # the class token stays once written
        return hidden

    def _visibility(self, frame: int, coarse: bool, n: int) -> torch.Tensor | None:
        """(1, n, K) over the held rows and the chunk: the layout's rule (a full query sees every
        held row by construction; a compressed one only compressed rows), biased by the decay."""
        if not coarse and not self.decay:
            return None  # every held row is visible: no mask at all
        k_frame = torch.tensor(self.row_frame + [frame] * n, dtype=torch.long)
        k_coarse = torch.tensor(self.row_coarse + [coarse] * n, dtype=torch.bool)
        q_frame = torch.full((n,), frame, dtype=torch.long)
        q_coarse = torch.full((n,), coarse, dtype=torch.bool)
        present = torch.zeros(int(k_frame.max()) + 1, dtype=torch.bool)
        present[k_frame[~k_coarse]] = True
        visible = visibility_rule(
            q_frame, q_coarse, k_frame, k_coarse, present, self.model.config.short_window
        )
        if self.decay:
            visible = temporal_bias(visible, q_frame, k_frame, self.decay)
        return visible[None].to(self.device)

    def leave_window(self, frame: int, clean: torch.Tensor) -> None:
        """Frame ``frame`` leaves the short window: evict its full rows, write it compressed.
        clean: (B', D, H, W) its latent in model units."""
        keep = [
            i for i, (f, c) in enumerate(zip(self.row_frame, self.row_coarse, strict=True))
            if c or f != frame
        ]  # fmt: skip
        rows = torch.tensor([0] + [NUM_PREFIX + i for i in keep], device=self.device)
        self.cache.keep(rows)
        self.row_frame = [self.row_frame[i] for i in keep]
        self.row_coarse = [self.row_coarse[i] for i in keep]
        tokens = self.model.long_tokens(clean[:, :, None]).flatten(1, 2)
        self.run(tokens, frame, coarse=True, commit=True)


@torch.no_grad()
def sample_far(
    model: FAR,
    num_frames: int,
    labels: torch.Tensor | None = None,
    *,
    context: torch.Tensor | None = None,
    batch_size: int | None = None,
    ode_steps: int = 10,
    cfg_scale: float | None = None,
    temporal_decay: float | None = None,
    generator: torch.Generator | None = None,
    return_trace: bool = False,
) -> FARSample:
    """Sample (B, D, num_frames, H, W) latents frame by frame (context frames included).

    labels: (B,) class ids, or None for unconditional (then give batch_size or context).
    context: (B, D, Tc, H, W) given leading frames in tokenizer units (frame prediction).
    ode_steps: Euler steps from t = 1 (noise) to t = 0 per frame.
    cfg_scale: None = no guidance; s gives v_u + s·(v_c - v_u) with the null class.
    temporal_decay: FlexRoPE's bias per frame of distance; None = the model's config.
    generator: a torch.Generator on the model's device, for reproducible noise.
    """
    cfg = model.config
    net = model.generator
    device = net.head.weight.device
    known = 0 if context is None else context.shape[2]
    if not known <= num_frames or num_frames < 1:
        raise ValueError(f"far: {num_frames} frames asked with {known} context frames given")
    if ode_steps < 1:
        raise ValueError(f"far: ode_steps must be >= 1, got {ode_steps}")
    if labels is None:
        batch = batch_size or (context.shape[0] if context is not None else None)
        if batch is None:
            raise ValueError("sample_far needs labels, batch_size or context")
        labels = torch.full((batch,), net.null_class, device=device)
    labels = labels.to(device)
    B = labels.shape[0]
    guided = cfg_scale is not None
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, net.null_class)])
    decay = cfg.temporal_decay if temporal_decay is None else temporal_decay
    H, W = cfg.latent_hw
    latents = torch.zeros(B, cfg.latent_dim, num_frames, H, W, device=device)
    if context is not None:
        latents[:, :, :known] = context.to(device).float() * cfg.latent_scale
    was_training = model.training
    model.eval()
    try:
        decoder = _CachedDecoder(model, labels, num_frames, decay)
        times = torch.linspace(1.0, 0.0, ode_steps + 1).tolist()
        trace = []

        def doubled(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x]) if guided else x

        for f in range(num_frames):
            w = cfg.short_window
            if w is not None and f - w >= 0:
                decoder.leave_window(f - w, doubled(latents[:, :, f - w]))
            if f >= known:
                x = torch.randn(B, cfg.latent_dim, H, W, device=device, generator=generator)
                for s in range(ode_steps):
                    t = torch.full((x.shape[0] * (2 if guided else 1), 1), times[s], device=device)
                    tokens = model.full_tokens(doubled(x)[:, :, None], t).flatten(1, 2)
                    hidden = decoder.run(tokens, f, coarse=False, commit=False)
                    v = model.to_velocity(hidden, t)[:, :, 0]  # (B', D, H, W)
                    if guided:
                        cond, uncond = v.chunk(2)
                        v = uncond + cfg_scale * (cond - uncond)
                    if return_trace:
                        trace.append((f, times[s], x.clone(), v.clone()))
                    x = x + (times[s + 1] - times[s]) * v
                latents[:, :, f] = x
            if f < num_frames - 1:  # the last frame is context for nobody
                clean = torch.full((B * (2 if guided else 1), 1), CLEAN, device=device)
                tokens = model.full_tokens(doubled(latents[:, :, f])[:, :, None], clean)
                decoder.run(tokens.flatten(1, 2), f, coarse=False, commit=True)
        return FARSample(
            latents=latents / cfg.latent_scale,
            forwards=decoder.forwards,
            max_cache_len=decoder.max_len,
            trace=trace,
        )
    finally:
        model.train(was_training)


def predict_frames(
    model: FAR,
    context_latents: torch.Tensor,
    num_frames: int,
    labels: torch.Tensor | None = None,
    *,
    ode_steps: int = 10,
    cfg_scale: float | None = None,
    temporal_decay: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Frame prediction: (B, D, Tc, H, W) context latents (tokenizer units) -> the next
    ``num_frames`` latent frames (B, D, num_frames, H, W), sampled frame by frame."""
    known = context_latents.shape[2]
    sample = sample_far(
        model, known + num_frames, labels, context=context_latents, ode_steps=ode_steps,
        cfg_scale=cfg_scale, temporal_decay=temporal_decay, generator=generator,
    )  # fmt: skip
    return sample.latents[:, :, known:]
