"""Schedules: step counts, orders, inputs and coordinates as DESIGN.md and PAPERS.md state them."""

import pytest
import torch

from models.generator.attention import dense_group_mask
from models.generator.schedules import ScheduleConfig, build_schedule, frame, nbp, ntp, par

GRID = (5, 16, 16)  # NBP's UCF latent grid: 17 frames at 128² -> 5×16×16 tokens


def all_schedules(grid):
    return [
        ntp(grid),
        nbp(grid, (1, 1, grid[2])),
        nbp(grid, (1, grid[1], grid[2])),
        nbp(grid, (1, 2, 2)),
        par(grid, 4),
        frame(grid),
        nbp(grid, (1, 1, grid[2]), hybrid_prefix=grid[2]),
        par(grid, 4, prefix="clip"),
    ]


def test_step_counts_equal_design_table():
    T, H, W = GRID
    # DESIGN.md: ntp T·H·W; nbp T·H·W/block; par R + (H·W/R - 1) per frame; frame T.
    assert ntp(GRID).num_steps == 1280
    assert nbp(GRID, (1, 1, 16)).num_steps == 80
    assert nbp(GRID, (1, 16, 16)).num_steps == 5
    assert nbp(GRID, (1, 4, 4)).num_steps == 80
    assert par(GRID, 4).num_steps == T * (4 + H * W // 4 - 1) == 335
    assert par(GRID, 16).num_steps == T * (16 + H * W // 16 - 1) == 155
    assert frame(GRID).num_steps == 5
    # PAPERS.md: PAR's image grid 24×24 -> 147 steps at R=4, 51 at R=16.
    assert par((1, 24, 24), 4).num_steps == 147
    assert par((1, 24, 24), 16).num_steps == 51


def test_step_counts_of_nbp_hybrid_and_par_clip_prefix_equal_the_papers():
    # PAPERS.md: NBP's UCF hybrid, 16 tokens one at a time then row blocks: 16 + 79 = 95.
    assert nbp(GRID, (1, 1, 16), hybrid_prefix=16).num_steps == 16 + 79 == 95
    # PAR's video steps, one sequential prefix per clip: 3 + 320 = 323 (4x), 15 + 80 = 95 (16x).
    assert par(GRID, 4, prefix="clip").num_steps == 323
    assert par(GRID, 16, prefix="clip").num_steps == 95
    # "frame" is the per-frame restart: 335 / 155.
    assert par(GRID, 4, prefix="frame").num_steps == 335
    assert par(GRID, 16, prefix="frame").num_steps == 155
    config = ScheduleConfig(name="nbp", block=(1, 1, 16), hybrid_prefix=16)
    assert build_schedule(config, GRID).num_steps == 95
    assert (
        build_schedule(ScheduleConfig(name="par", regions=4, prefix="clip"), GRID).num_steps == 323
    )


def test_schedule_config_builds_the_named_schedule():
    config = ScheduleConfig(name="nbp", block=(1, 1, 16))
    assert build_schedule(config, GRID).num_steps == 80
    assert build_schedule(ScheduleConfig(name="par", regions=16), GRID).num_steps == 155


@pytest.mark.parametrize("schedule", all_schedules((2, 4, 4)), ids=lambda s: s.name)
def test_order_composed_with_inverse_is_identity(schedule):
    n = schedule.num_tokens
    assert torch.equal(schedule.order[schedule.inverse_order()], torch.arange(n))
    assert torch.equal(schedule.inverse_order()[schedule.order], torch.arange(n))
    tokens = torch.randint(0, 100, (3, *schedule.grid))
    assert torch.equal(schedule.sequence_to_tokens(schedule.tokens_to_sequence(tokens)), tokens)


def test_par_order_composed_with_inverse_is_identity_at_paper_scale():
    for regions in (4, 16):
        schedule = par(GRID, regions)
        assert not torch.equal(
            schedule.order, torch.arange(schedule.num_tokens)
        )  # a real permutation
        assert torch.equal(schedule.order[schedule.inverse_order()], torch.arange(1280))


@pytest.mark.parametrize("schedule", all_schedules((2, 4, 4)), ids=lambda s: s.name)
def test_coordinates_are_the_true_position_of_each_target(schedule):
    T, H, W = schedule.grid
    t, h, w = schedule.coords.long().unbind(1)
    assert torch.equal(t * H * W + h * W + w, schedule.order)
    assert schedule.coords.dtype.is_floating_point


@pytest.mark.parametrize("schedule", all_schedules((2, 4, 4)), ids=lambda s: s.name)
def test_groups_are_contiguous_and_inputs_come_from_earlier_groups(schedule):
    assert bool((schedule.group[1:] - schedule.group[:-1] >= 0).all())
    assert bool((schedule.group[1:] - schedule.group[:-1] <= 1).all())
    has_src = schedule.input_src >= 0
    src_group = schedule.group[schedule.input_src[has_src]]
    assert torch.equal(src_group, schedule.group[has_src] - 1)  # exactly the previous group
    assert bool((schedule.input_learned[~has_src] >= 0).all())


def test_par_first_tokens_sequential_then_aligned_positions_of_all_regions():
    schedule = par((1, 4, 4), 4)  # regions of 2×2: corners at (0,0), (0,2), (2,0), (2,2)
    groups = [schedule.order[a:b].tolist() for a, b in map(schedule.group_bounds, range(7))]
    assert groups[:4] == [[0], [2], [8], [10]]  # first token of each region, one per step
    assert groups[4] == [1, 3, 9, 11]  # position (0, 1) of all four regions at once
    assert groups[6] == [5, 7, 13, 15]
    # PAR's transition: [t3, M1, M2, M3] predict the first parallel group.
    assert schedule.input_src[4:8].tolist() == [3, -1, -1, -1]
    assert schedule.input_learned[4:8].tolist() == [-1, 1, 2, 3]
    # Sequential part: NTP, starting from the learned start input.
    assert schedule.input_src[:4].tolist() == [-1, 0, 1, 2]
    assert schedule.input_learned[0].item() == 0


def test_par_video_restarts_the_sequential_part_in_every_frame():
    schedule = par((2, 4, 4), 4)
    sizes = (schedule.group_start[1:] - schedule.group_start[:-1]).tolist()
    assert sizes == [1, 1, 1, 1, 4, 4, 4] * 2
    assert set(schedule.coords[:16, 0].tolist()) == {0.0}


def test_nbp_hybrid_predicts_the_prefix_one_by_one_then_bridges_into_blocks():
    schedule = nbp((1, 4, 4), (1, 1, 4), hybrid_prefix=4)
    sizes = (schedule.group_start[1:] - schedule.group_start[:-1]).tolist()
    assert sizes == [1, 1, 1, 1, 4, 4, 4]
    assert schedule.order.tolist() == list(range(16))  # row blocks keep the raster order
    # Prefix: NTP from the start input.
    assert schedule.input_src[:4].tolist() == [-1, 0, 1, 2]
    assert schedule.input_learned[:4].tolist() == [0, -1, -1, -1]
    # NBP's hybrid layout [z0..z3, mb1..mb3, z4..]: the first block reads [z3, bridge 1..3] ...
    assert schedule.input_src[4:8].tolist() == [3, -1, -1, -1]
    assert schedule.input_learned[4:8].tolist() == [-1, 1, 2, 3]
    # ... and every later block reads the same slots of the block before it.
    assert schedule.input_src[8:].tolist() == list(range(4, 12))
    assert nbp((1, 4, 4), (1, 1, 4), hybrid_prefix=0).num_steps == 4


def test_nbp_hybrid_prefix_must_be_whole_blocks():
    with pytest.raises(ValueError, match="hybrid_prefix"):
        nbp(GRID, (1, 1, 16), hybrid_prefix=10)


def test_par_clip_prefix_is_sequential_once_then_aligned_positions_frame_by_frame():
    schedule = par((2, 4, 4), 4, prefix="clip")
    sizes = (schedule.group_start[1:] - schedule.group_start[:-1]).tolist()
    assert sizes == [1, 1, 1, 1] + [4] * 7  # one sequential prefix for the clip
    groups = [schedule.order[a:b].tolist() for a, b in map(schedule.group_bounds, range(11))]
    assert groups[:5] == [[0], [2], [8], [10], [1, 3, 9, 11]]  # frame 0 as in the image order
    assert groups[7] == [16, 18, 24, 26]  # frame 1 continues the regions: no restart
    # The transition into parallel mode happens once, with PAR's M1..M3.
    assert schedule.input_learned.tolist().count(1) == 1
    assert schedule.input_src[16:20].tolist() == [
        12,
        13,
        14,
        15,
    ]  # frame 1 reads frame 0's last group
    assert schedule.positions_before_frame(1) == 16


@pytest.mark.parametrize(
    "schedule",
    [nbp((2, 4, 4), (1, 1, 4), hybrid_prefix=4), par((2, 4, 4), 4, prefix="clip")],
    ids=lambda s: s.name,
)
def test_group_causal_mask_lets_a_group_see_earlier_groups_and_itself_only(schedule):
    mask = dense_group_mask(schedule.group, schedule.group)  # (N, N): query sees key
    for g in range(schedule.num_steps):
        a, b = schedule.group_bounds(g)
        assert bool(mask[a:b, :b].all())  # every earlier group and its own group, in full
        assert not bool(mask[a:b, b:].any())  # nothing later
    # The sequential prefix is plain causal attention.
    first_parallel = int((schedule.group_start[1:] - schedule.group_start[:-1] > 1).nonzero()[0])
    n = int(schedule.group_start[first_parallel])
    assert torch.equal(mask[:n, :n], torch.ones(n, n, dtype=torch.bool).tril())


def test_nbp_input_is_same_slot_of_previous_block():
    schedule = nbp((1, 4, 4), (1, 1, 4))  # NBP's [bov×L, z[:-L]] with L = 4
    assert schedule.input_learned[:4].tolist() == [0, 0, 0, 0]
    assert schedule.input_src[4:].tolist() == list(range(12))
    cube = nbp((2, 4, 4), (2, 2, 2))
    a, b = cube.group_bounds(1)
    assert cube.input_src[a:b].tolist() == list(range(8))  # slot j of block 1 <- slot j of block 0


def test_nbp_block_that_does_not_tile_the_grid_is_rejected():
    with pytest.raises(ValueError, match="does not tile"):
        nbp(GRID, (2, 1, 16))  # 5 latent frames are not a multiple of 2
    with pytest.raises(ValueError, match="square number"):
        par(GRID, 8)


def test_context_frames_must_end_on_a_group_boundary():
    assert par((3, 4, 4), 4).positions_before_frame(2) == 32
    with pytest.raises(ValueError, match="inside a group"):
        nbp((4, 4, 4), (2, 4, 4)).positions_before_frame(1)
