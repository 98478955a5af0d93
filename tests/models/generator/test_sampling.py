"""Sampling: per-group decoding over the KV cache, classifier-free guidance, filters, context."""

import pytest
import torch

from models.generator.sampling import generate, guide, sample_logits
from models.generator.schedules import nbp, ntp, par
from tests.models.generator.test_transformer import (
    GRID,
    VOCAB,
    every_schedule,
    full_forward,
    tiny_model,
)


@pytest.mark.parametrize("schedule", every_schedule(), ids=lambda s: s.name)
def test_sampling_takes_one_step_per_group_and_its_logits_match_teacher_forcing(schedule):
    model = tiny_model()
    labels = torch.tensor([0, 3])
    result = generate(
        model, schedule, labels, generator=torch.Generator().manual_seed(0), return_logits=True
    )
    assert result.steps == schedule.num_steps
    assert result.tokens.shape == (2, *GRID)
    with torch.no_grad():
        teacher = full_forward(model, schedule, schedule.tokens_to_sequence(result.tokens), labels)
    torch.testing.assert_close(result.logits, teacher, atol=1e-4, rtol=0)


@pytest.mark.parametrize("form,neutral", [("classic", 1.0), ("var", 0.0)])
def test_cfg_with_guidance_one_equals_the_conditional_model(form, neutral):
    model = tiny_model(seed=1)
    schedule = par(GRID, 4)
    labels = torch.tensor([1, 2, 4])
    plain = generate(
        model, schedule, labels, generator=torch.Generator().manual_seed(7), return_logits=True
    )
    guided = generate(
        model,
        schedule,
        labels,
        cfg_scale=neutral,  # still runs the batched unconditional half with its own cache
        cfg_form=form,
        generator=torch.Generator().manual_seed(7),
        return_logits=True,
    )
    torch.testing.assert_close(guided.logits, plain.logits, atol=1e-5, rtol=0)
    assert torch.equal(guided.tokens, plain.tokens)


@pytest.mark.parametrize("schedule", [ntp(GRID), nbp(GRID, (1, 1, 4))], ids=lambda s: s.name)
def test_cfg_combines_conditional_and_unconditional_halves_each_with_its_own_cache(schedule):
    model = tiny_model(seed=2)
    labels = torch.tensor([0, 3])
    result = generate(
        model,
        schedule,
        labels,
        cfg_scale=3.0,
        generator=torch.Generator().manual_seed(1),
        return_logits=True,
    )
    sequence = schedule.tokens_to_sequence(result.tokens)
    with torch.no_grad():
        cond = full_forward(model, schedule, sequence, labels)
        uncond = full_forward(model, schedule, sequence, torch.full_like(labels, model.null_class))
    torch.testing.assert_close(result.logits, uncond + 3.0 * (cond - uncond), atol=1e-4, rtol=0)
    assert (cond - uncond).abs().max() > 1e-2  # the halves really differ


def test_cfg_forms_agree_when_var_scale_is_classic_scale_minus_one():
    cond, uncond = torch.randn(4, 10), torch.randn(4, 10)
    torch.testing.assert_close(guide(cond, uncond, 2.5, "classic"), guide(cond, uncond, 1.5, "var"))
    assert not torch.allclose(guide(cond, uncond, 2.5, "classic"), guide(cond, uncond, 2.5, "var"))


def test_per_group_guidance_ramp_is_applied_group_by_group():
    model = tiny_model(seed=3)
    schedule = nbp(GRID, (1, 4, 4))  # 2 groups
    labels = torch.tensor([2])
    result = generate(model, schedule, labels, cfg_scale=[1.0, 4.0], return_logits=True)
    sequence = schedule.tokens_to_sequence(result.tokens)
    with torch.no_grad():
        cond = full_forward(model, schedule, sequence, labels)
        uncond = full_forward(model, schedule, sequence, torch.full_like(labels, model.null_class))
    torch.testing.assert_close(result.logits[:, :16], cond[:, :16], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        result.logits[:, 16:], (uncond + 4.0 * (cond - uncond))[:, 16:], atol=1e-4, rtol=0
    )


def test_context_frames_are_kept_prefilled_and_not_counted_as_steps():
    model = tiny_model(seed=4)
    grid = (3, 4, 4)
    schedule = par(grid, 4)  # 7 groups per frame
    context = torch.randint(0, VOCAB, (2, 1, 4, 4))
    labels = torch.tensor([0, 1])
    result = generate(model, schedule, labels, context=context, return_logits=True)
    assert torch.equal(result.tokens[:, :1], context)
    assert result.steps == 14
    sequence = schedule.tokens_to_sequence(result.tokens)
    with torch.no_grad():
        teacher = full_forward(model, schedule, sequence, labels)
    torch.testing.assert_close(result.logits[:, 16:], teacher[:, 16:], atol=1e-4, rtol=0)


def test_temperature_zero_is_greedy():
    logits = torch.randn(5, 50)
    assert torch.equal(sample_logits(logits, temperature=0), logits.argmax(-1))


def test_top_k_and_top_p_keep_only_the_allowed_tokens_of_each_position():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 40).repeat(500, 1)  # 1000 positions, two distinct distributions
    top3 = logits[:2].topk(3).indices
    picked = sample_logits(logits, top_k=3, generator=generator).view(500, 2)
    for row in range(2):
        assert set(picked[:, row].tolist()) <= set(top3[row].tolist())
        assert len(set(picked[:, row].tolist())) == 3
    probs = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    nucleus = sample_logits(probs, top_p=0.7, generator=generator)  # 0.5 + 0.3 reaches 0.7
    assert set(nucleus.tolist()) == {0, 1}


def test_plain_sampling_follows_the_softmax_distribution():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    logits = probs.log().repeat(40_000, 1)
    picked = sample_logits(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(picked, minlength=4).float() / 40_000
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    hot = sample_logits(logits, temperature=0.5, generator=torch.Generator().manual_seed(0))
    sharpened = probs**2 / (probs**2).sum()
    torch.testing.assert_close(
        torch.bincount(hot, minlength=4).float() / 40_000, sharpened, atol=0.01, rtol=0
    )


def test_bf16_logits_can_draw_every_code():
    uniform = torch.zeros(50_000, 4096, dtype=torch.bfloat16)  # what a bf16 head gives
    picked = sample_logits(uniform, generator=torch.Generator().manual_seed(0))
    assert picked.unique().numel() == 4096  # a bf16 cumulative sum reached only 768 of them


def test_videos_come_from_the_tokenizer_given():
    class RecordingTokenizer:
        def decode_indices(self, indices):
            self.seen = indices
            return indices.float() * 2

    tokenizer = RecordingTokenizer()
    model = tiny_model(seed=5)
    result = generate(model, nbp(GRID, (1, 4, 4)), batch_size=2, tokenizer=tokenizer)
    assert torch.equal(tokenizer.seen, result.tokens)
    assert torch.equal(result.videos, result.tokens.float() * 2)


def test_sampling_leaves_the_model_in_training_mode_if_it_was():
    model = tiny_model(seed=6, label_dropout=1.0).train()
    generate(model, ntp((1, 2, 2)), torch.tensor([1]))
    assert model.training


def test_a_schedule_needing_more_transition_inputs_than_the_model_has_is_refused():
    model = tiny_model(max_learned_inputs=4)  # PAR with 16 regions needs 16
    with pytest.raises(ValueError, match="max_learned_inputs"):
        generate(model, par((1, 8, 8), 16), torch.tensor([0]))
