"""FAR: flow matching on continuous latents, long short-term context, FlexRoPE, cached sampling."""

from __future__ import annotations

import pytest
import torch

from models.generator.config import FARConfig, GeneratorConfig
from models.generator.far import CLEAN, FAR
from models.generator.far_layout import far_layout, temporal_bias
from models.generator.far_sampling import predict_frames, sample_far
from models.generator.transformer import Generator

D, HW = 3, (4, 4)


def make_model(n_embd: int = 32, randomize_head: bool = True, **switches) -> FAR:
    """A tiny FAR; the head (zero-initialised, so it would predict 0 everywhere) gets random
    weights, so that equivalence tests compare real numbers."""
    torch.manual_seed(0)
    generator = Generator(
        GeneratorConfig(
            vocab_size=4, num_classes=3, n_layer=2, n_head=2, n_embd=n_embd, label_dropout=0.0
        )
    )
    config = FARConfig(latent_dim=D, latent_hw=HW, long_patch=2, **switches)
    model = FAR(generator, config).eval()
    if randomize_head:
        with torch.no_grad():
            for name, p in model.head.named_parameters():
                if "ada" in name or name.startswith("out"):
                    p.normal_(0, 0.2)
    return model


def latents(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, D, frames, *HW, generator=torch.Generator().manual_seed(seed))


def test_flow_matching_loss_falls_to_near_zero_on_one_memorised_latent() -> None:
    model = make_model(n_embd=64, randomize_head=False, clean_context_prob=0.0).train()
    one = latents(1, 2)
    batch = one.expand(16, -1, -1, -1, -1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    steps = 300
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    first = None
    for _ in range(steps):
        loss = model(batch)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():  # fresh noise and time steps: the velocity field itself was learned
        final = float(
            model(one.expand(64, -1, -1, -1, -1), generator=torch.Generator().manual_seed(1))
        )
    assert first > 1.0  # E|noise - x0|^2 for a zero prediction
    assert final < 0.04 * first  # near zero: the error left is a few percent at most


@pytest.mark.parametrize(
    ("window", "cfg_scale", "decay"), [(None, None, 0.0), (2, 2.0, 0.0), (2, None, 0.4)]
)
def test_cached_sampling_velocities_equal_teacher_forced_ones(window, cfg_scale, decay) -> None:
    model = make_model(short_window=window)
    labels = torch.tensor([0, 2])
    sample = sample_far(
        model, 5, labels, ode_steps=2, cfg_scale=cfg_scale, temporal_decay=decay,
        generator=torch.Generator().manual_seed(3), return_trace=True,
    )  # fmt: skip
    assert len(sample.trace) == 5 * 2
    clean = sample.latents * model.config.latent_scale
    null = torch.full_like(labels, model.generator.null_class)
    for f, t, x_t, v in sample.trace:
        # The exact layout: every frame at full resolution, compressed items where the window ends.
        full = torch.cat([clean[:, :, :f], x_t[:, :, None]], dim=2)
        times = torch.tensor([[CLEAN] * f + [t]] * 2)
        until = 0 if window is None else max(0, f + 1 - window)
        compressed = clean[:, :, :until] if until else None

        def velocity(lab: torch.Tensor, full=full, times=times, compressed=compressed):
            return model.velocity(
                full, times, lab, compressed=compressed, full_from=0, temporal_decay=decay
            )[:, :, -1]

        expected = velocity(labels)
        if cfg_scale is not None:
            uncond = velocity(null)
            expected = uncond + cfg_scale * (expected - uncond)
        assert torch.allclose(v, expected, atol=2e-5), (f, t)


@pytest.mark.parametrize("full_from", [None, 0])
def test_no_frame_sees_the_future(full_from) -> None:
    model = make_model(short_window=2)
    T = 6
    layout = model.layout(T, full_from)
    clean = latents(2, T)
    full = latents(2, T - layout.full_from, seed=1)
    times = torch.rand(2, T - layout.full_from)
    labels = torch.tensor([1, 0])

    def run(clean, full):
        compressed = clean[:, :, : layout.coarse_until]
        return model.velocity(full, times, labels, compressed=compressed, full_from=full_from)

    base = run(clean, full)
    for k in range(T):
        changed_clean = clean.clone()
        changed_clean[:, :, k] += 1.0
        changed_full = full.clone()
        if k >= layout.full_from:
            changed_full[:, :, k - layout.full_from] += 1.0
        out = run(changed_clean, changed_full)
        before = k - layout.full_from  # output index of frame k
        if before > 0:
            assert torch.equal(out[:, :, :before], base[:, :, :before]), k
        assert not torch.allclose(out[:, :, max(before, 0) :], base[:, :, max(before, 0) :]), k


def _seen(layout, query: int) -> set[tuple[int, str]]:
    row = layout.visibility[0, query]
    return {
        (int(f), "coarse" if bool(c) else "full")
        for f, c in zip(layout.frame[row], layout.coarse[row], strict=True)
    }


def test_long_context_mask_gives_each_query_exactly_its_frames_and_resolutions() -> None:
    config = FARConfig(latent_dim=D, latent_hw=(4, 4), long_patch=2, short_window=3)
    T, w = 7, 3
    train = far_layout(config, T)  # FAR's layout: [0, 4) compressed, [4, 7) full
    assert (train.coarse_until, train.full_from) == (4, 4)
    for q in range(train.num_tokens):
        j, coarse = int(train.frame[q]), bool(train.coarse[q])
        if coarse:
            expected = {(f, "coarse") for f in range(j + 1)}
        else:  # every earlier frame once: full inside the window where held full, else coarse
            expected = {(f, "coarse") for f in range(4)} | {(f, "full") for f in range(4, j + 1)}
        assert _seen(train, q) == expected, (j, coarse)

    exact = far_layout(config, T, full_from=0)  # every frame full too: the KV cache's view
    for q in range(exact.num_tokens):
        j, coarse = int(exact.frame[q]), bool(exact.coarse[q])
        if coarse:
            expected = {(f, "coarse") for f in range(j + 1)}
        else:
            expected = {(f, "coarse") for f in range(j - w + 1)} | {
                (f, "full") for f in range(max(0, j - w + 1), j + 1)
            }
        assert _seen(exact, q) == expected, (j, coarse)

    # Compressed tokens: 4x fewer per frame (2x2 cells), centred on the cells they cover.
    assert config.tokens_per_frame == 16 and config.long_tokens_per_frame == 4
    first = train.coords[train.coarse][:4]
    assert first.tolist() == [[0, 0.5, 0.5], [0, 0.5, 2.5], [0, 2.5, 0.5], [0, 2.5, 2.5]]
    assert train.num_tokens == config.context_tokens(T) == 3 * 16 + 4 * 4


def test_context_tokens_grow_by_the_compressed_frame_beyond_the_window() -> None:
    config = FARConfig(latent_dim=6, latent_hw=(8, 8), long_patch=4, short_window=4)
    full = FARConfig(latent_dim=6, latent_hw=(8, 8))
    assert [config.context_tokens(t) for t in (16, 32, 64)] == [304, 368, 496]
    assert full.context_tokens(64) == 64 * 64
    assert full.context_tokens(64) / config.context_tokens(64) >= 4


def test_temporal_decay_bias_falls_with_frame_distance_and_keeps_hidden_keys_hidden() -> None:
    visible = torch.tensor([[True, True, False], [True, True, True]])
    bias = temporal_bias(visible, torch.tensor([1, 2]), torch.tensor([0, 1, 2]), 0.5)
    assert bias.tolist() == [[-0.5, 0.0, float("-inf")], [-1.0, -0.5, 0.0]]
    # At sampling the decay changes what a frame with context predicts, not the first frame.
    model = make_model(short_window=2)
    kwargs = {"ode_steps": 1, "return_trace": True}
    plain = sample_far(
        model, 3, torch.tensor([0]), generator=torch.Generator().manual_seed(0), **kwargs
    )
    decayed = sample_far(
        model,
        3,
        torch.tensor([0]),
        temporal_decay=2.0,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    assert torch.allclose(plain.trace[0][3], decayed.trace[0][3], atol=1e-6)
    assert not torch.allclose(plain.trace[2][3], decayed.trace[2][3], atol=1e-4)


def test_a_model_trained_with_a_short_window_samples_longer_videos_with_a_bounded_cache() -> None:
    model = make_model(short_window=2, randomize_head=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = latents(4, 3)
    for _ in range(5):  # trained on 3-frame clips
        loss = model(data, torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    long = sample_far(
        model, 12, torch.tensor([1, 2]), ode_steps=2, cfg_scale=1.5, temporal_decay=0.2
    )
    assert long.latents.shape == (2, D, 12, *HW)
    assert torch.isfinite(long.latents).all()
    cfg = model.config
    # class token + 2 full frames + the noisy frame + one compressed item per frame out of the window
    assert long.max_cache_len <= 1 + 3 * cfg.tokens_per_frame + 10 * cfg.long_tokens_per_frame
    # ODE steps per frame, a clean write per frame but the last, a compressed write per old frame
    assert long.forwards == 12 * 2 + 11 + 10


def test_predict_frames_continues_the_given_context() -> None:
    model = make_model(short_window=2)
    context = latents(2, 2)
    predicted = predict_frames(
        model, context, 3, ode_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert predicted.shape == (2, D, 3, *HW)
    whole = sample_far(
        model, 5, context=context, ode_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(whole.latents[:, :, :2], context)
    assert torch.allclose(whole.latents[:, :, 2:], predicted)
    assert whole.forwards == 3 * 2 + 4 + 3  # context frames are written, never sampled


def test_clean_context_frames_are_left_out_of_the_loss() -> None:
    model = make_model(clean_context_prob=0.5).train()
    data = latents(8, 3)
    # A frame given clean has no target: the loss ignores what the head says for it. With every
    # frame clean the loss is 0; with none, the usual flow-matching error.
    model.config = model.config.model_copy(update={"clean_context_prob": 0.999})
    with torch.no_grad():
        assert float(model(data, generator=torch.Generator().manual_seed(0))) == 0.0
        assert float(model(data, clean_context=False)) > 0.1


def test_a_layout_that_does_not_tile_or_a_sequence_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="long_patch"):
        FARConfig(latent_hw=(6, 6), long_patch=4)
    model = make_model(short_window=2)
    with pytest.raises(ValueError, match="do not fit"):
        model.velocity(latents(1, 4), torch.rand(1, 4))  # 4 full frames but the window is 2
