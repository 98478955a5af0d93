"""Generation schedules as data: which tokens form each decoding step, and what each step reads.

A schedule turns a T×H×W token grid into a sequence of N = T·H·W predicting positions, cut into
G consecutive *groups*; the tokens of one group are predicted in one decoding step. Everything a
model needs is in index tensors, so the transformer never asks which method it runs:

- ``order[i]``     raster index (t·H·W + h·W + w) of the token that position i predicts
- ``group[i]``     group id of position i (non-decreasing, 0..G-1)
- ``coords[i]``    float (t, h, w) of that target token, for RoPE (floats so that a later
                   next-scale schedule can map coarse scales onto the finest grid)
- ``input_src[i]`` the position whose token is position i's input, or -1 when the input is a
                   learned embedding, whose index is ``input_learned[i]``

The input rule is the same for every schedule: slot j of group g reads the token at slot j of
group g-1; group 0 reads the learned *start* input (index 0); a slot that the previous group
lacks (the group grew, e.g. PAR's switch to parallel mode) reads the learned *transition*
input j (PAR's M1..M(R-1)). NTP falls out as "input = previous token", NBP as NBP's
``[bov×L, z[:-L]]``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
from einops import rearrange

from models.generator.config import ScheduleConfig

Grid = tuple[int, int, int]  # (T, H, W) latent token grid


@dataclass(frozen=True)
class Schedule:
    """Index tensors that define one generation order over a (T, H, W) token grid."""

    name: str
    grid: Grid
    order: torch.Tensor  # (N,) long: raster index of the target of each position
    group: torch.Tensor  # (N,) long: group id of each position
    slot: torch.Tensor  # (N,) long: index of the position inside its group
    coords: torch.Tensor  # (N, 3) float: (t, h, w) of the target of each position
    input_src: torch.Tensor  # (N,) long: position whose token is the input, -1 if learned
    input_learned: torch.Tensor  # (N,) long: learned input index, -1 if a token
    group_start: torch.Tensor  # (G+1,) long: first position of each group, then N

    @property
    def num_tokens(self) -> int:
        """N, the number of tokens (and predicting positions)."""
        return int(self.order.numel())

    @property
    def num_steps(self) -> int:
        """G, the number of decoding steps (groups)."""
        return int(self.group_start.numel()) - 1

    @property
    def num_learned_inputs(self) -> int:
        """How many learned input embeddings (start + transitions) this schedule reads."""
        return int(self.input_learned.max().item()) + 1

    @property
    def max_group_size(self) -> int:
        """The largest number of tokens predicted in one step."""
        return int((self.group_start[1:] - self.group_start[:-1]).max().item())

    def group_bounds(self, g: int) -> tuple[int, int]:
        """Positions [start, end) of group g."""
        return int(self.group_start[g]), int(self.group_start[g + 1])

    def inverse_order(self) -> torch.Tensor:
        """(N,) long: position of each raster token, so ``order[inverse_order()] == arange``."""
        return torch.argsort(self.order)

    def to(self, device: torch.device | str) -> Schedule:
        """The same schedule with its tensors on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[key] = value.to(device)
        return Schedule(**moved)

    def tokens_to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W) token grid -> (B, N) targets in schedule order."""
        if tuple(tokens.shape[1:]) != self.grid:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not fit grid {self.grid}")
        return tokens.flatten(1)[:, self.order]

    def sequence_to_tokens(self, sequence: torch.Tensor) -> torch.Tensor:
        """(B, N) tokens in schedule order -> (B, T, H, W) token grid."""
        raster = sequence[:, self.inverse_order()]
        return raster.view(sequence.shape[0], *self.grid)

    def input_ids(
        self, sequence: torch.Tensor, vocab_size: int, start: int = 0, end: int | None = None
    ) -> torch.Tensor:
        """(B, N) targets in schedule order -> (B, end-start) input ids of positions [start, end);
        learned input k becomes id vocab_size + k. Inputs read only earlier groups, so when
        [start, end) is one group, ``sequence`` need hold nothing from ``start`` on."""
        src = self.input_src[start:end]  # (L,)
        from_tokens = sequence[:, src.clamp(min=0)]  # (B, L)
        learned = vocab_size + self.input_learned[start:end]  # (L,)
        return torch.where(src >= 0, from_tokens, learned)

    def check_learned_inputs(self, capacity: int) -> None:
        """Raise if this schedule reads more learned inputs than a model with ``capacity`` has."""
        if self.num_learned_inputs > capacity:
            raise ValueError(
                f"{self.name} reads {self.num_learned_inputs} learned inputs but the model has "
                f"{capacity}; raise GeneratorConfig.max_learned_inputs"
            )

    def positions_before_frame(self, frame: int) -> int:
        """Number of leading positions whose targets lie in frames < ``frame``; they must form
        whole groups (used to prefill given context frames)."""
        count = int((self.coords[:, 0] < frame).sum().item())
        if not bool((self.coords[:count, 0] < frame).all()):
            raise ValueError(f"{self.name}: frames < {frame} are not a prefix of the order")
        if count not in set(self.group_start.tolist()):
            raise ValueError(
                f"{self.name}: {frame} context frames end inside a group; "
                "choose a frame count on a group boundary (e.g. a multiple of the block's bt)"
            )
        return count


def _from_groups(name: str, grid: Grid, groups: list[torch.Tensor]) -> Schedule:
    """Build a Schedule from its groups, each a 1-D tensor of raster indices in slot order."""
    T, H, W = grid
    sizes = torch.tensor([len(g) for g in groups])
    order = torch.cat(groups)  # (N,)
    if not torch.equal(torch.sort(order).values, torch.arange(T * H * W)):
        raise AssertionError(f"{name}: the groups do not cover the grid exactly once")
    group = torch.repeat_interleave(torch.arange(len(groups)), sizes)  # (N,)
    group_start = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])  # (G+1,)
    slot = torch.arange(order.numel()) - group_start[group]  # (N,)

    # Slot j of group g reads slot j of group g-1 when that slot exists.
    prev_size = torch.cat([torch.zeros(1, dtype=torch.long), sizes[:-1]])[group]  # (N,)
    has_src = (group > 0) & (slot < prev_size)
    input_src = torch.where(has_src, group_start[(group - 1).clamp(min=0)] + slot, -1)
    # Otherwise a learned input: index 0 starts the video, index j fills a missing slot j.
    input_learned = torch.where(has_src, -1, torch.where(group == 0, 0, slot))

    t = order // (H * W)
    h = (order // W) % H
    w = order % W
    coords = torch.stack([t, h, w], dim=1).float()  # (N, 3)
    return Schedule(
        name=name,
        grid=grid,
        order=order,
        group=group,
        slot=slot,
        coords=coords,
        input_src=input_src,
        input_learned=input_learned,
        group_start=group_start,
    )


def ntp(grid: Grid) -> Schedule:
    """One token per step in raster order: T·H·W steps."""
    T, H, W = grid
    return _from_groups("ntp", grid, list(torch.arange(T * H * W).split(1)))


def nbp(grid: Grid, block: tuple[int, int, int] = (1, 1, 16), hybrid_prefix: int = 0) -> Schedule:
    """One bt×bh×bw block per step, blocks in raster order: T·H·W / (bt·bh·bw) steps.

    hybrid_prefix=n (NBP's UCF-101 setting): the first n tokens one at a time (NTP from the
    start input), then blocks; the first block reads the last prefix token in slot 0 and learned
    bridge inputs 1..L-1 elsewhere (NBP's middle bos ids). n must be a whole number of blocks:
    5×16×16 with row blocks and n=16 takes 16 + 79 = 95 steps.
    """
    T, H, W = grid
    bt, bh, bw = block
    if T % bt or H % bh or W % bw:
        raise ValueError(
            f"nbp block {block} does not tile grid {grid}; pick a block that divides it"
        )
    index = torch.arange(T * H * W).view(T, H, W)
    blocks = rearrange(
        index, "(nt bt) (nh bh) (nw bw) -> (nt nh nw) (bt bh bw)", bt=bt, bh=bh, bw=bw
    )  # (G, block size): each row one group, slots in raster order inside the block
    name = {(1, 1, W): "nbp_row", (1, H, W): "nbp_frame"}.get((bt, bh, bw), "nbp_cube")
    if hybrid_prefix == 0:
        return _from_groups(name, grid, list(blocks))
    size = bt * bh * bw
    if hybrid_prefix < 0 or hybrid_prefix % size or hybrid_prefix > T * H * W:
        raise ValueError(
            f"nbp hybrid_prefix {hybrid_prefix} must be a whole number of {size}-token blocks "
            f"within grid {grid} (ScheduleConfig.hybrid_prefix)"
        )
    prefix_blocks = hybrid_prefix // size
    sequential = list(blocks[:prefix_blocks].flatten().split(1))  # NTP over the first blocks
    return _from_groups(
        f"{name}_hybrid{hybrid_prefix}", grid, sequential + list(blocks[prefix_blocks:])
    )


def frame(grid: Grid) -> Schedule:
    """One latent frame per step: T steps."""
    T, H, W = grid
    return _from_groups("frame", grid, list(torch.arange(T * H * W).view(T, H * W)))


def par(grid: Grid, regions: int = 4, prefix: Literal["frame", "clip"] = "frame") -> Schedule:
    """PAR: R regions; their first tokens one by one, then the same position of all R regions
    per step.

    prefix="frame" restarts that in every frame: R + (H·W/R - 1) steps per frame (335 for R=4,
    155 for R=16 on 5×16×16). prefix="clip" (PAR's video steps) makes each region a column of
    the clip, (T, H/s, W/s) read frame by frame, so one sequential prefix serves the whole clip:
    R + (T·H·W/R - 1) steps (323 for R=4, 95 for R=16 on 5×16×16). Either way a frame's tokens
    are whole groups, frame after frame, so given context frames still end on a group boundary.
    """
    T, H, W = grid
    side = round(regions**0.5)
    if side * side != regions or H % side or W % side:
        raise ValueError(
            f"par with {regions} regions needs a square number of regions whose side "
            f"divides H and W of grid {grid}"
        )
    if prefix not in ("frame", "clip"):
        raise ValueError(f"par prefix {prefix!r}: use 'frame' or 'clip' (ScheduleConfig.prefix)")
    index = torch.arange(T * H * W).view(T, H, W)
    # Row p lists position p of every region (regions in raster order): PAR's
    # (s, H/s, s, W/s) -> (H/s, W/s, s, s) permutation, per frame or over the clip.
    aligned = rearrange(index, "t (rh ph) (rw pw) -> t (ph pw) (rh rw)", rh=side, rw=side)
    if prefix == "clip":
        rows = aligned.flatten(0, 1)  # (T·H·W/R, R): frame-major positions inside each region
        groups = list(rows[0].split(1)) + list(rows[1:])
        return _from_groups(f"par{regions}_clip", grid, groups)
    groups = []
    for rows in aligned:  # (H·W/R, R) per frame
        groups.extend(rows[0].split(1))  # the first token of each region, sequentially
        groups.extend(rows[1:])  # then all regions in parallel, position by position
    return _from_groups(f"par{regions}", grid, groups)


def build_schedule(config: ScheduleConfig, grid: Grid) -> Schedule:
    """The schedule named by ``config`` over ``grid``."""
    if config.name == "ntp":
        return ntp(grid)
    if config.name == "nbp":
        return nbp(grid, config.block, config.hybrid_prefix)
    if config.name == "par":
        return par(grid, config.regions, config.prefix)
    return frame(grid)
