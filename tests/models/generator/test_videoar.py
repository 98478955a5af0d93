"""VideoAR: next-scale schedule, KV-cache equivalence, no leakage, error correction, masks."""

from __future__ import annotations

import pytest
import torch

from models.generator.transformer import Generator, GeneratorConfig
from models.generator.videoar import (
    ErrorCorrectionConfig,
    FrameMaskConfig,
    LongContextConfig,
    VideoAR,
    VideoARConfig,
    cfg_ramp,
    generate_videoar,
    next_scale,
)

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


def test_step_inputs_equal_teacher_forcing_inputs() -> None:
    model = make_model()
    indices = random_indices(model, 2, 3)
    full = model.embed_inputs(indices)
    schedule = model.schedule(3)
    for t in range(3):
        for k in range(len(SCALES)):
            s, e = schedule.group_bounds(t * len(SCALES) + k)
            torch.testing.assert_close(
                model.group_input(indices, t, k), full[:, s:e], atol=1e-6, rtol=0
            )


@pytest.mark.parametrize("cfg_scale", [None, 2.0])
def test_kv_cache_logits_match_full_forward_for_next_scale(cfg_scale) -> None:
    model = make_model()
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


def test_context_frames_are_kept_and_prefilled_consistently() -> None:
    model = make_model()
    context = [x[:, :1] for x in random_indices(model, 1, 1, seed=3)]
    sample = generate_videoar(model, 3, torch.tensor([1]), context=context, return_logits=True)
    assert all(torch.equal(s[:, :1], c) for s, c in zip(sample.indices, context, strict=True))
    assert sample.steps == 2 * len(SCALES)
    with torch.no_grad():
        full, _ = model(sample.indices, torch.tensor([1]), perturb=False)
    skip = model.tokens_per_frame
    torch.testing.assert_close(sample.logits[:, skip:], full[:, skip:], atol=1e-4, rtol=0)


def test_changing_a_group_changes_no_logits_of_earlier_or_same_groups() -> None:
    model = make_model()
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


def test_error_correction_recomputes_later_targets_against_the_corrupted_sum() -> None:
    ec = ErrorCorrectionConfig(enabled=True, max_strength=1.0, corrupt_scales=1)
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


def test_frame_mask_hides_earlier_frames_but_never_a_frame_from_itself() -> None:
    model = make_model(frame_mask=FrameMaskConfig(prob=1.0, drop_prob=1.0))
    vis = model.frame_mask_visibility(2, 3, torch.Generator().manual_seed(0))
    frame = model.frame_of_position(3)
    same = frame[:, None] == frame[None, :]
    earlier = frame[None, :] < frame[:, None]
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


def test_long_context_bounds_the_context_and_decoding_matches_the_masked_forward() -> None:
    lc = LongContextConfig(window=1, keep_scales=1)
    model = make_model(long_context=lc)
    frames = 5
    vis = model.long_context_visibility(frames)[0]
    causal = model.schedule(frames).group[None, :] <= model.schedule(frames).group[:, None]
    per_query = (vis & causal).sum(dim=1)
    coarse = 1  # scale 0 is 1x1
    bound = (lc.window + 1) * model.tokens_per_frame + (frames - lc.window - 1) * coarse
    assert int(per_query.max()) <= bound < int(causal.sum(dim=1).max())

    labels = torch.tensor([1])
    sample = generate_videoar(
        model, frames, labels, generator=torch.Generator().manual_seed(2), return_logits=True
    )
    assert sample.max_cache_len <= 1 + bound
    with torch.no_grad():
        full, _ = model(sample.indices, labels, perturb=False)
    torch.testing.assert_close(sample.logits, full, atol=1e-4, rtol=0)


def test_training_with_perturbations_lowers_the_clean_loss() -> None:
    ec = ErrorCorrectionConfig(enabled=True, max_strength=0.2)
    model = make_model(error_correction=ec, frame_mask=FrameMaskConfig(prob=0.5)).train()
    indices = random_indices(model, 2, 2)
    labels = torch.tensor([0, 1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = float(model.loss(indices, labels, perturb=False))
    for _ in range(60):
        loss = model.loss(
            indices, labels, generator=g
        )  # perturbed: corrupted inputs, masked frames
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
