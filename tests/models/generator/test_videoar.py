"""VideoAR: next-scale schedule, previous-frame context, KV-cache equivalence, no leakage, error
correction (legacy and Infinity-style), masks."""

from __future__ import annotations

import copy

import pytest
import torch
from einops import rearrange

from models.generator.config import (
    ErrorCorrectionConfig,
    FrameMaskConfig,
    LongContextConfig,
    VideoARConfig,
)
from models.generator.error_correction import near_miss
from models.generator.transformer import Generator, GeneratorConfig
from models.generator.videoar import (
    VideoAR,
    cfg_ramp,
    generate_videoar,
    next_scale,
)

CONTEXTS = ["full", "pooled"]

LEVELS = [4, 4]  # 16 codes keep the output head tiny
SCALES = [1, 2, 4]


def make_model(**switches) -> VideoAR:
    torch.manual_seed(0)
    generator = Generator(
        GeneratorConfig(
            vocab_size=16, num_classes=3, n_layer=2, n_head=2, n_embd=32, label_dropout=0.0
        )
    )
    config = VideoARConfig(levels=LEVELS, scales=SCALES, latent_hw=(4, 4), **switches)
    return VideoAR(generator, config).eval()


def random_indices(model: VideoAR, batch: int, frames: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 16, (batch, frames, h, w), generator=g) for h, w in model.shapes]


def tokenized_latent(
    model: VideoAR, batch: int, frames: int, seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A continuous latent (B, D, T, 4, 4) in code units, as the tokenizer's FSQ bounds it, and
    the multi-scale indices the tokenizer's quantizer makes of it."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, frames, 4, 4, len(LEVELS), generator=g) * 2
    continuous = rearrange(model.quantizer.fsq.continuous(z), "b t h w d -> b d t h w")
    return continuous, model.quantizer.quantize_residual(continuous)[1]


def test_next_scale_has_frames_times_scales_steps_and_coarse_coords_on_the_finest_grid() -> None:
    schedule = next_scale(3, [(1, 1), (2, 2), (4, 4)])
    assert schedule.num_steps == 3 * 3 and schedule.num_tokens == 3 * 21
    scale1 = schedule.coords[1:5]  # frame 0, scale 1 (2x2): rows/cols 0 and 2 of the 4x4 grid
    assert scale1.tolist() == [[0, 0, 0], [0, 0, 2], [0, 2, 0], [0, 2, 2]]
    assert schedule.coords[21:, 0].min() == 1  # frame index is time
    model = make_model()
    assert model.schedule(5).num_steps == 5 * len(SCALES)


def test_flatten_and_unflatten_are_inverse() -> None:
    model = make_model()
    indices = random_indices(model, 2, 3)
    back = model.unflatten(model.flatten(indices), 3)
    assert all(torch.equal(a, b) for a, b in zip(indices, back, strict=True))


@pytest.mark.parametrize("frame_context", CONTEXTS)
def test_step_inputs_equal_teacher_forcing_inputs(frame_context) -> None:
    model = make_model(frame_context=frame_context)
    indices = random_indices(model, 2, 3)
    full = model.embed_inputs(indices)
    layout = model.layout(3)
    assert full.shape[1] == layout.num_positions
    for t in range(3):
        for k in range(len(SCALES)):
            s, _, e = layout.group_bounds(t * len(SCALES) + k)
            torch.testing.assert_close(
                model.group_input(indices, t, k), full[:, s:e], atol=1e-6, rtol=0
            )


def test_full_context_leads_each_later_frame_with_the_previous_complete_latent() -> None:
    model = make_model(frame_context="full")
    frames, hw = 3, 16  # 4x4 finest grid
    layout = model.layout(frames)
    per_frame = model.tokens_per_frame
    # Frame 0 has no previous frame; frames 1, 2 lead their first group with 16 context rows.
    assert layout.num_positions == frames * per_frame + (frames - 1) * hw
    assert layout.context_len.tolist() == [0, 0, 0, hw, 0, 0, hw, 0, 0]
    assert layout.schedule.num_steps == frames * len(SCALES)  # still T*K steps
    start, first, end = layout.group_bounds(3)  # group (t=1, k=0)
    assert (first - start, end - first) == (hw, 1)
    # Their coordinates are the true (t-1, h, w) of the finest grid they hold.
    grid = [[0.0, float(h), float(w)] for h in range(4) for w in range(4)]
    assert layout.coords[start:first].tolist() == grid
    assert layout.group[start:end].unique().tolist() == [3]
    # Inputs: frame 0's complete latent (all scales), projected, plus the context embedding.
    indices = random_indices(model, 2, frames)
    latent = model.quantizer.accumulate([x[:, :1] for x in indices], (4, 4))  # (B, D, 1, 4, 4)
    expected = model.input_proj(rearrange(latent, "b d t h w -> b (t h w) d"))
    expected = expected + model.context_embedding
    torch.testing.assert_close(model.group_input(indices, 1, 0)[:, :hw], expected)
    # No target, no loss: the forward returns logits of the predicting positions only.
    with torch.no_grad():
        logits, targets = model(indices, perturb=False)
    assert logits.shape[:2] == targets.shape == (2, frames * per_frame)


@pytest.mark.parametrize("frame_context", CONTEXTS)
def test_the_finest_scale_of_a_frame_reaches_the_next_frame_only_with_full_context(
    frame_context,
) -> None:
    # Swapping two finest-scale tokens of frame 0 keeps its average and every coarser input:
    # under "pooled" frame 1 cannot tell (the finding), under "full" it must.
    model = make_model(frame_context=frame_context)
    indices = random_indices(model, 1, 2, seed=4)
    finest = indices[-1].clone()
    finest[0, 0, 0, 0], finest[0, 0, 3, 3] = 3, 12
    swapped = finest.clone()
    swapped[0, 0, 0, 0], swapped[0, 0, 3, 3] = 12, 3
    first = model.tokens_per_frame
    with torch.no_grad():
        a, _ = model([*indices[:-1], finest], perturb=False)
        b, _ = model([*indices[:-1], swapped], perturb=False)
    torch.testing.assert_close(a[:, :first], b[:, :first], atol=0, rtol=0)  # frame 0 itself
    change = float((a[:, first:] - b[:, first:]).abs().max())
    if frame_context == "full":
        assert change > 1e-3
    else:
        assert change < 1e-5


@pytest.mark.parametrize("frame_context", CONTEXTS)
@pytest.mark.parametrize("cfg_scale", [None, 2.0])
def test_kv_cache_logits_match_full_forward_for_next_scale(cfg_scale, frame_context) -> None:
    model = make_model(frame_context=frame_context)
    labels = torch.tensor([0, 2])
    sample = generate_videoar(
        model,
        3,
        labels,
        cfg_scale=cfg_scale,
        generator=torch.Generator().manual_seed(1),
        return_logits=True,
    )
    assert sample.steps == 3 * len(SCALES)
    with torch.no_grad():
        cond, _ = model(sample.indices, labels, perturb=False)
        if cfg_scale is None:
            expected = cond
        else:
            uncond, _ = model(
                sample.indices, torch.full_like(labels, model.generator.null_class), perturb=False
            )
            ramp = torch.tensor(cfg_ramp(cfg_scale, len(SCALES), True))
            t = ramp[model.scale_of_position(3)][None, :, None]
            expected = (1 + t) * cond - t * uncond
    torch.testing.assert_close(sample.logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("frame_context", CONTEXTS)
def test_context_frames_are_kept_and_prefilled_consistently(frame_context) -> None:
    model = make_model(frame_context=frame_context)
    context = [x[:, :1] for x in random_indices(model, 1, 1, seed=3)]
    sample = generate_videoar(model, 3, torch.tensor([1]), context=context, return_logits=True)
    assert all(torch.equal(s[:, :1], c) for s, c in zip(sample.indices, context, strict=True))
    assert sample.steps == 2 * len(SCALES)
    with torch.no_grad():
        full, _ = model(sample.indices, torch.tensor([1]), perturb=False)
    skip = model.tokens_per_frame
    torch.testing.assert_close(sample.logits[:, skip:], full[:, skip:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("frame_context", CONTEXTS)
def test_changing_a_group_changes_no_logits_of_earlier_or_same_groups(frame_context) -> None:
    model = make_model(frame_context=frame_context)
    indices = random_indices(model, 1, 3)
    schedule = model.schedule(3)
    with torch.no_grad():
        base, _ = model(indices, perturb=False)
        for g in range(schedule.num_steps):
            t, k = divmod(g, len(SCALES))
            changed = [x.clone() for x in indices]
            changed[k][:, t] = (changed[k][:, t] + 1) % 16
            logits, _ = model(changed, perturb=False)
            s, e = schedule.group_bounds(g)
            assert torch.equal(logits[:, :e], base[:, :e]), (
                f"group {g} leaks into itself or earlier"
            )
            if e < schedule.num_tokens:
                assert not torch.allclose(logits[:, e:], base[:, e:]), (
                    f"group {g} influences nothing later"
                )


def test_error_correction_strength_ramps_with_the_frame_index() -> None:
    cfg = ErrorCorrectionConfig(enabled=True, max_strength=0.3)
    torch.testing.assert_close(cfg.strengths(5), torch.tensor([0.0, 0.075, 0.15, 0.225, 0.3]))
    capped = ErrorCorrectionConfig(enabled=True, max_strength=0.2, ramp_frames=2)
    torch.testing.assert_close(capped.strengths(4), torch.tensor([0.0, 0.1, 0.2, 0.2]))


def test_legacy_error_correction_recomputes_later_targets_against_the_corrupted_sum() -> None:
    ec = ErrorCorrectionConfig(enabled=True, mode="legacy", max_strength=1.0, corrupt_scales=1)
    model = make_model(error_correction=ec)
    indices = random_indices(model, 1, 2, seed=5)
    inputs, targets = model.corrupt(indices, torch.Generator().manual_seed(0))
    # Frame 0 has strength 0: untouched inputs and targets.
    for k in range(len(SCALES)):
        assert torch.equal(inputs[k][:, 0], indices[k][:, 0]) and torch.equal(
            targets[k][:, 0], indices[k][:, 0]
        )
    # Frame 1, strength 1: its coarsest scale is replaced; its target stays the original token.
    assert torch.equal(targets[0][:, 1], indices[0][:, 1])
    assert not torch.equal(inputs[0][:, 1], indices[0][:, 1])
    # By hand: the signal is the full latent of the clean tokens; scale 1's target is the
    # quantized residual of that signal minus the corrupted scale-0 accumulation.
    q = model.quantizer
    signal = q.accumulate([x[:, 1:] for x in indices], (4, 4))
    corrupted_acc = q.accumulate([inputs[0][:, 1:]], (4, 4))
    _, expected = q.quantize_residual(signal, corrupted_acc, start_scale=1)
    assert torch.equal(targets[1][:, 1:], expected[0])
    # Scales past corrupt_scales are fed their (recomputed) targets unchanged.
    assert torch.equal(inputs[1], targets[1]) and torch.equal(inputs[2], targets[2])


def test_infinity_error_correction_without_corruption_keeps_the_tokens_bit_for_bit() -> None:
    ec = ErrorCorrectionConfig(enabled=True, mode="infinity", max_strength=0.0)
    model = make_model(error_correction=ec)
    continuous, indices = tokenized_latent(model, 3, 4)
    inputs, targets = model.corrupt(indices, torch.Generator().manual_seed(0), continuous)
    for k in range(len(SCALES)):
        assert torch.equal(targets[k], indices[k]) and torch.equal(inputs[k], indices[k])


def test_infinity_error_correction_makes_near_misses_and_requantizes_from_the_continuous_latent():
    ec = ErrorCorrectionConfig(enabled=True, mode="infinity", max_strength=1.0, ramp_frames=1)
    model = make_model(error_correction=ec)
    continuous, indices = tokenized_latent(model, 8, 2, seed=1)
    inputs, targets = model.corrupt(indices, torch.Generator().manual_seed(0), continuous)
    fsq = model.quantizer.fsq
    half = torch.tensor([2.0, 2.0])  # levels 4, 4
    for k in range(len(SCALES)):
        # Frame 0 has strength 0: its exact tokens, as inputs and as targets.
        assert torch.equal(inputs[k][:, 0], indices[k][:, 0])
        assert torch.equal(targets[k][:, 0], indices[k][:, 0])
        # Every scale of frame 1 is corrupted, each change at most one level per dimension.
        assert not torch.equal(inputs[k][:, 1], targets[k][:, 1])
        step = (fsq.indices_to_codes(inputs[k]) - fsq.indices_to_codes(targets[k])) * half
        assert float(step.abs().max()) == 1.0
        # The target of scale k is what the corrupted inputs of scales < k miss of the
        # continuous latent (not of the quantized one).
        read = model.quantizer.accumulate(inputs[:k], (4, 4)) if k else None
        expected = model.quantizer.quantize_residual(continuous, read, start_scale=k)[1][0]
        assert torch.equal(targets[k], expected)
    assert not torch.equal(targets[1][:, 1], indices[1][:, 1])  # frame 1 was re-targeted


def test_infinity_error_correction_corrupts_only_the_configured_scales() -> None:
    ec = ErrorCorrectionConfig(enabled=True, mode="infinity", max_strength=1.0, scales=[1])
    model = make_model(error_correction=ec)
    continuous, indices = tokenized_latent(model, 8, 3, seed=2)
    inputs, targets = model.corrupt(indices, torch.Generator().manual_seed(0), continuous)
    assert torch.equal(inputs[0], targets[0]) and torch.equal(inputs[2], targets[2])
    assert not torch.equal(inputs[1], targets[1])
    assert torch.equal(targets[0], indices[0])  # scale 0 reads nothing corrupted
    with pytest.raises(ValueError, match="error_correction.scales"):
        make_model(error_correction=ErrorCorrectionConfig(enabled=True, scales=[3]))


def test_near_miss_changes_a_drawn_share_of_dimensions_by_one_level_within_range() -> None:
    model = make_model()
    fsq = model.quantizer.fsq
    tokens = torch.arange(16).repeat(200)  # every code, corners included
    assert torch.equal(near_miss(fsq, tokens, torch.tensor(0.0)), tokens)
    moved = near_miss(fsq, tokens, torch.tensor(1.0), torch.Generator().manual_seed(0))
    before = fsq.indices_to_codes(tokens) * 2 + 2  # digits 0..3
    after = fsq.indices_to_codes(moved) * 2 + 2
    assert float(after.min()) >= 0 and float(after.max()) <= 3  # clamped to the level range
    moved_dims = (after - before).abs()
    assert float(moved_dims.max()) == 1.0
    inner = (before > 0) & (before < 3)
    assert bool((moved_dims[inner] == 1).all())  # away from the edges every dimension moves
    half = near_miss(fsq, tokens, torch.tensor(0.5), torch.Generator().manual_seed(1))
    share = float(((fsq.indices_to_codes(half) * 2 + 2) != before)[inner].float().mean())
    assert 0.4 < share < 0.6


def test_infinity_error_correction_needs_the_continuous_latent_and_says_so() -> None:
    model = make_model(error_correction=ErrorCorrectionConfig(enabled=True, mode="infinity"))
    indices = random_indices(model, 1, 2)
    with pytest.raises(ValueError, match="continuous=.*error_correction.mode='legacy'"):
        model(indices, perturb=True)
    with pytest.raises(ValueError, match="does not fit"):
        model(indices, perturb=True, continuous=torch.zeros(1, 2, 3, 4, 4))
    with torch.no_grad():
        model(indices, perturb=False)  # evaluation needs no latent


@pytest.mark.parametrize("frame_context", CONTEXTS)
def test_frame_mask_hides_earlier_frames_but_never_a_frame_from_itself(frame_context) -> None:
    model = make_model(
        frame_mask=FrameMaskConfig(prob=1.0, drop_prob=1.0), frame_context=frame_context
    )
    vis = model.frame_mask_visibility(2, 3, torch.Generator().manual_seed(0))
    layout = model.layout(3)
    # A key counts as the frame whose latent it holds: context rows of frame t hold frame t-1.
    same = layout.frame[:, None] == layout.content_frame[None, :]
    earlier = layout.content_frame[None, :] < layout.frame[:, None]
    assert bool(vis[:, same].all()) and not bool(vis[:, earlier].any())
    off = make_model(frame_mask=FrameMaskConfig(prob=0.0))
    assert off.frame_mask_visibility(2, 3) is None


def test_frame_mask_changes_training_logits_only_when_on() -> None:
    model = make_model(frame_mask=FrameMaskConfig(prob=1.0, drop_prob=1.0))
    indices = random_indices(model, 1, 3)
    with torch.no_grad():
        clean, _ = model(indices, perturb=False)
        masked, _ = model(indices, perturb=True, generator=torch.Generator().manual_seed(0))
    first = model.tokens_per_frame
    assert torch.allclose(clean[:, :first], masked[:, :first], atol=1e-6)  # frame 0 has no past
    assert not torch.allclose(clean[:, first:], masked[:, first:])


@pytest.mark.parametrize("frame_context", CONTEXTS)
def test_long_context_bounds_the_context_and_decoding_matches_the_masked_forward(
    frame_context,
) -> None:
    lc = LongContextConfig(window=1, keep_scales=1)
    model = make_model(long_context=lc, frame_context=frame_context)
    frames = 5
    vis = model.long_context_visibility(frames)[0]
    group = model.layout(frames).group
    causal = group[None, :] <= group[:, None]
    per_query = (vis & causal).sum(dim=1)
    coarse = 1  # scale 0 is 1x1
    rows_per_frame = model.tokens_per_frame + (16 if frame_context == "full" else 0)
    bound = (lc.window + 1) * rows_per_frame + (frames - lc.window - 1) * coarse
    assert int(per_query.max()) <= bound < int(causal.sum(dim=1).max())

    labels = torch.tensor([1])
    sample = generate_videoar(
        model, frames, labels, generator=torch.Generator().manual_seed(2), return_logits=True
    )
    assert sample.max_cache_len <= 1 + bound
    with torch.no_grad():
        full, _ = model(sample.indices, labels, perturb=False)
    torch.testing.assert_close(sample.logits, full, atol=1e-4, rtol=0)


def test_long_context_decoding_after_more_given_frames_than_the_window_fits_its_cache() -> None:
    # The first forward prefills every given frame before anything can be evicted: the cache
    # must hold them, then shrink back to the window's bound.
    model = make_model(long_context=LongContextConfig(window=1, keep_scales=1))
    labels = torch.tensor([2])
    context = [x[:, :3] for x in random_indices(model, 1, 3, seed=6)]
    sample = generate_videoar(model, 5, labels, context=context, return_logits=True)
    assert sample.steps == 2 * len(SCALES)
    with torch.no_grad():
        full, _ = model(sample.indices, labels, perturb=False)
    skip = 3 * model.tokens_per_frame
    torch.testing.assert_close(sample.logits[:, skip:], full[:, skip:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["infinity", "legacy"])
def test_training_with_perturbations_lowers_the_clean_loss(mode) -> None:
    ec = ErrorCorrectionConfig(enabled=True, mode=mode, max_strength=0.2)
    model = make_model(error_correction=ec, frame_mask=FrameMaskConfig(prob=0.5)).train()
    continuous, indices = tokenized_latent(model, 2, 2)
    labels = torch.tensor([0, 1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = float(model.loss(indices, labels, perturb=False))
    for _ in range(60):
        # perturbed: corrupted inputs, masked frames
        loss = model.loss(indices, labels, continuous=continuous, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(model.loss(indices, labels, perturb=False))
    assert after < 0.6 * before


def test_mismatched_vocab_or_scales_fail_clearly() -> None:
    generator = Generator(
        GeneratorConfig(vocab_size=20, num_classes=1, n_layer=1, n_head=2, n_embd=16)
    )
    with pytest.raises(ValueError, match="vocab_size"):
        VideoAR(generator, VideoARConfig(levels=LEVELS, scales=SCALES, latent_hw=(4, 4)))
    model = make_model()
    with pytest.raises(ValueError, match="2 scales"):
        model.flatten(random_indices(model, 1, 1)[:2])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_full_context_forward_agrees_between_flex_block_mask_and_dense_mask() -> None:
    # The GPU path (FlexAttention) must read the context positions and the long-context
    # visibility as the CPU path does.
    model = make_model(frame_context="full", long_context=LongContextConfig(window=1))
    indices = random_indices(model, 2, 4)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        dense, _ = model(indices, labels, perturb=False, backend="sdpa")
        flex, _ = model(indices, labels, perturb=False, backend="flex")
    torch.testing.assert_close(flex, dense, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cast", ["generator", "whole"])
@pytest.mark.parametrize("decode", ["eager", "static"])
def test_bf16_videoar_samples_and_its_logits_stay_close_to_float32(cast, decode) -> None:
    """Inputs follow the weights' dtype: a bf16 generator under a float32 wrapper (or all bf16)."""
    reference = make_model()
    with torch.no_grad():
        for p in reference.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)  # logits of a few units, so a dtype slip shows
    half = copy.deepcopy(reference)
    (half.generator if cast == "generator" else half).to(torch.bfloat16)
    labels = torch.tensor([0, 2])
    sample = generate_videoar(
        half, 3, labels, generator=torch.Generator().manual_seed(0), return_logits=True,
        decode=decode,
    )  # fmt: skip
    assert all(int(x.min()) >= 0 and int(x.max()) < 16 for x in sample.indices)
    with torch.no_grad():
        exact, _ = reference(sample.indices, labels, perturb=False)
        forward, _ = half(sample.indices, labels, perturb=False)
    assert forward.dtype == torch.bfloat16
    scale = exact.abs().max()
    assert (forward.float() - exact).abs().max() < 0.03 * scale  # bf16 rounding, ~1.5% here
    assert (sample.logits - exact).abs().max() < 0.03 * scale
