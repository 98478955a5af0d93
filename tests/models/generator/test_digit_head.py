"""The per-digit output head: a proper distribution over FSQ codes, its loss equal to the
cross-entropy of the codes' log-probabilities, and decoding with it equal to the full forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.generator.config import VideoARConfig
from models.generator.digit_head import (
    digit_cross_entropy,
    digit_log_probs,
    digit_token_log_prob,
)
from models.generator.transformer import Generator, GeneratorConfig
from models.generator.videoar import VideoAR, generate_videoar
from models.tokenizer.fsq import FSQ, index_digits

LEVELS = [8, 5, 3]


def test_digits_follow_the_tokenizers_code_numbering():
    fsq = FSQ(LEVELS)
    codes = torch.arange(math.prod(LEVELS))
    digits = index_digits(codes, LEVELS)
    assert torch.equal(digits[:, 0] + 8 * (digits[:, 1] + 5 * digits[:, 2]), codes)
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(codes)), codes)
    # FSQ's codes are the digits centred and scaled by each level's half width.
    half_width = torch.tensor([4, 2, 1])
    rebuilt = (fsq.indices_to_codes(codes) * half_width + half_width).round().long()
    assert torch.equal(rebuilt, digits)


def test_code_log_probs_are_a_distribution_and_the_sum_of_digit_log_probs():
    logits = torch.randn(3, 7, sum(LEVELS))
    log_probs = digit_log_probs(logits, LEVELS)
    assert log_probs.shape == (3, 7, math.prod(LEVELS))
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(3, 7), atol=1e-5, rtol=0)
    code = 2 + 8 * (4 + 5 * 1)  # digits (2, 4, 1)
    parts = torch.split(logits, LEVELS, dim=-1)
    expected = sum(p.log_softmax(-1)[..., d] for p, d in zip(parts, (2, 4, 1), strict=True))
    torch.testing.assert_close(log_probs[..., code], expected)


def test_digit_loss_equals_code_cross_entropy_in_value_and_gradient():
    logits = torch.randn(40, sum(LEVELS), requires_grad=True)
    targets = torch.randint(0, math.prod(LEVELS), (40,))
    loss = digit_cross_entropy(logits, targets, LEVELS)
    (grad,) = torch.autograd.grad(loss, logits)
    full = F.cross_entropy(digit_log_probs(logits, LEVELS), targets)
    (full_grad,) = torch.autograd.grad(full, logits)
    torch.testing.assert_close(loss, full)
    torch.testing.assert_close(grad, full_grad)
    per_token = digit_token_log_prob(logits, targets, LEVELS)
    expected = digit_log_probs(logits, LEVELS).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(per_token, expected)


def test_a_digit_head_needs_levels_that_number_the_vocabulary():
    small = dict(num_classes=2, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="needs output_levels"):
        Generator(GeneratorConfig(vocab_size=120, output_head="digits", **small))
    with pytest.raises(ValueError, match=r"output_levels \[8, 5, 3\] number 120 codes"):
        GeneratorConfig(vocab_size=64, output_head="digits", output_levels=LEVELS, **small)
    model = Generator(
        GeneratorConfig(vocab_size=120, output_head="digits", output_levels=LEVELS, **small)
    )
    assert model.head.out_features == sum(LEVELS)


def _videoar() -> VideoAR:
    torch.manual_seed(0)
    generator = Generator(
        GeneratorConfig(
            vocab_size=16, output_head="digits", output_levels=[4, 4], num_classes=3,
            n_layer=2, n_head=2, n_embd=32, label_dropout=0.0,
        )
    )  # fmt: skip
    config = VideoARConfig(levels=[4, 4], scales=[1, 2, 4], latent_hw=(4, 4), frame_context="full")
    return VideoAR(generator, config).eval()


def test_cached_sampling_with_a_digit_head_matches_the_full_forward_and_its_loss():
    model = _videoar()
    labels = torch.tensor([0, 2])
    sample = generate_videoar(
        model, 3, labels, generator=torch.Generator().manual_seed(1), return_logits=True
    )
    with torch.no_grad():
        log_probs, targets = model(sample.indices, labels, perturb=False)
        loss = model.loss(sample.indices, labels, perturb=False)
    torch.testing.assert_close(sample.logits, log_probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(2, 63), atol=1e-5, rtol=0)
    expected = F.cross_entropy(log_probs.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
