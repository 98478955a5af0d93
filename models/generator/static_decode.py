"""Decoding steps with static shapes: captured once per group size, then replayed.

The eager loop calls the model once per group with shapes that change every step (the keys grow
by a group, the cache offset is a Python int), so each of a step's kernels is launched from
Python; for a small model that launch overhead is most of the step (5 ms per NTP step of a
63.5M model on an H200, at batch 1 and 16 alike).

A static step has the same shapes every time it runs for a given group size: its queries are the
group's L positions, its keys are every row of the preallocated cache, a mask hides the rows not
yet written, and the offset lives in a device tensor. So the step of each group size is captured
once (a CUDA graph, or torch.compile) and replayed at any offset: NTP captures one step, PAR two
(1 and R positions), VideoAR one per scale. The first forward of a run (class token, given
context frames) goes through the model's own forward; inputs, guidance and sampling stay outside
the step, on the device, with no host sync.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Literal

import torch

from models.generator.attention import GroupMask
from models.generator.kv_cache import KVCache, RowWrites
from models.generator.transformer import Generator

DecodeMode = Literal["eager", "static", "graph", "compiled"]
# eager: the model's forward per group (the default). static: the fixed-shape step, run as is.
# graph: the fixed-shape step captured in a CUDA graph per group size (CUDA only). compiled: the
# fixed-shape step through torch.compile, and on CUDA captured as in "graph". Each group size,
# batch and cache length compiles once: past torch._dynamo.config.cache_size_limit (8) such
# shapes in one process, torch falls back to running the step uncompiled.
DECODE_MODES: tuple[str, ...] = ("eager", "static", "graph", "compiled")

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def static_step(
    model: Generator,
    cache: KVCache,
    cache_rows: torch.Tensor,
    start: torch.Tensor,
    inputs: torch.Tensor,
    coords: torch.Tensor,
    logits_from: int,
) -> torch.Tensor:
    """Logits (B, L - logits_from, V) of one group written to cache rows [start, start + L).

    inputs: (B, L) ids or (B, L, C) embeddings; coords: (L, 3); cache_rows: (max_len,) arange;
    start: () long on the model's device. Shapes depend on L only, never on ``start``.
    """
    if inputs.is_floating_point():
        x = inputs.to(model.head.weight.dtype)  # precomputed embeddings follow the weights
    else:
        x = model.input_embedding(inputs)  # (B, L, C)
    L = x.shape[1]
    end = start + L
    writes = RowWrites(cache, start + cache_rows[:L])
    # One group sees every written row and all of itself: the mask only hides unwritten rows.
    mask = GroupMask(dense=(cache_rows < end)[None])  # (1, max_len), broadcast over (B, H, L)
    rope = model.rope(coords)  # (L, D/2) each
    for layer, block in enumerate(model.blocks):
        x = block(x, rope, mask, writes, layer, 0)  # type: ignore[arg-type]  # RowWrites: a cache
    return model.project_to_vocab(model.norm(x[:, logits_from:]))


class CapturedStep:
    """One step recorded in a CUDA graph: copy the inputs in, replay, read the logits."""

    def __init__(self, step: StepFn, inputs: torch.Tensor, coords: torch.Tensor) -> None:
        self.inputs, self.coords = inputs.clone(), coords.clone()  # static addresses
        # Warm-up on a side stream (kernel choice, workspaces), as CUDA graph capture requires.
        # It writes this very step's keys at this very offset, so it changes nothing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step(self.inputs, self.coords)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.inputs, self.coords)

    def __call__(self, inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Replay on new inputs; the logits tensor is rewritten in place by the next replay."""
        self.inputs.copy_(inputs)
        self.coords.copy_(coords)
        self.graph.replay()
        return self.logits


class StaticDecoder:
    """Fixed-shape decoding steps of one model over its own preallocated KV cache.

    The model is held weakly: a decoder is cached per model (``decoder_for``), and a CUDA graph
    reads the weights by address, so it must not outlive them.
    """

    def __init__(
        self, model: Generator, batch_size: int, num_positions: int, mode: DecodeMode
    ) -> None:
        if mode not in ("static", "graph", "compiled"):
            raise ValueError(f"decode mode {mode!r}: a StaticDecoder runs 'static', 'graph' or "
                             "'compiled' (eager decoding needs no decoder)")  # fmt: skip
        device = model.head.weight.device
        if mode == "graph" and device.type != "cuda":
            raise ValueError(
                f"decode='graph' captures CUDA graphs, but the model is on {device}: "
                "use decode='static' or 'compiled' off CUDA"
            )
        self._model = weakref.ref(model)
        self.mode = mode
        self.cache = model.new_cache(batch_size, num_positions)
        self._cache_rows = torch.arange(self.cache.max_len, device=device)
        self._start = torch.zeros((), dtype=torch.long, device=device)
        self._capture = device.type == "cuda" and mode in ("graph", "compiled")
        self._run = torch.compile(static_step, dynamic=False) if mode == "compiled" else static_step
        self._steps: dict[tuple[int, int, bool], StepFn] = {}

    @property
    def model(self) -> Generator:
        """The model the steps run (raises once it has been freed)."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this StaticDecoder has been freed")
        return model

    @property
    def group_sizes(self) -> list[int]:
        """The group sizes whose steps have been built (captured, compiled), ascending."""
        return sorted({length for length, _, _ in self._steps})

    def reset(self) -> KVCache:
        """Empty the cache for a new sampling run; buffers and captured steps are kept."""
        self.cache.reset()
        return self.cache

    def step(
        self, inputs: torch.Tensor, coords: torch.Tensor, logits_from: int = 0
    ) -> torch.Tensor:
        """Logits (B, L - logits_from, V) of the next group, appended after the cached rows.

        inputs: (B, L) ids or (B, L, C) embeddings; coords: (L, 3). The cache must already hold
        the class token (the first forward is the model's own). The logits are valid until the
        next step: a replayed step rewrites them in place.
        """
        offset, length = self.cache.length, inputs.shape[1]
        if offset == 0:
            raise ValueError("a static step appends to a cache holding the class token: run the "
                             "first chunk through the model's forward")  # fmt: skip
        if offset + length > self.cache.max_len:
            raise ValueError(f"cache of {self.cache.max_len} positions cannot take "
                             f"{length} more after {offset}")  # fmt: skip
        self._start.fill_(offset)  # a device-side fill: no host sync
        key = (length, logits_from, inputs.is_floating_point())
        run = self._steps.get(key)
        if run is None:
            run = self._steps[key] = self._build(logits_from, inputs, coords)
        logits = run(inputs, coords)
        self.cache.commit(offset + length)
        return logits

    def _build(self, logits_from: int, inputs: torch.Tensor, coords: torch.Tensor) -> StepFn:
        """The step of one group size: plain, compiled, or captured in a CUDA graph."""

        def run(step_inputs: torch.Tensor, step_coords: torch.Tensor) -> torch.Tensor:
            return self._run(
                self.model, self.cache, self._cache_rows, self._start,
                step_inputs, step_coords, logits_from,
            )  # fmt: skip

        return CapturedStep(run, inputs, coords) if self._capture else run


# Decoders are reused across sampling runs (a capture or a compile is paid once), one set per
# live model, dropped with it.
_decoders: dict[int, dict[tuple, StaticDecoder]] = {}


def decoder_for(
    model: Generator, batch_size: int, num_positions: int, mode: DecodeMode
) -> StaticDecoder:
    """The model's decoder for this cache size and mode, made on first use and then reused."""
    ref = model.head.weight
    # Weights moved or cast (new addresses) invalidate captured graphs: key on where they live.
    weights = tuple(p.data_ptr() for p in model.parameters())
    key = (mode, batch_size, num_positions, ref.device, ref.dtype, weights)
    if id(model) not in _decoders:
        _decoders[id(model)] = {}
        weakref.finalize(model, _decoders.pop, id(model), None)
    per_model = _decoders[id(model)]
    if key not in per_model:
        for stale in [k for k in per_model if k[-1] != weights]:
            del per_model[stale]
        per_model[key] = StaticDecoder(model, batch_size, num_positions, mode)
    return per_model[key]
