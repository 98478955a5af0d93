"""The copy head: a proper distribution whose loss is its cross-entropy, the previous frame's token
as its source, and cached sampling equal to the full forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.generator.config import VideoARConfig
from models.generator.copy_head import (
    NO_SOURCE,
    TABLE_GAIN,
    DigitTransition,
    copy_mixture_log_prob,
    copy_mixture_log_probs,
)
from models.generator.transformer import Generator, GeneratorConfig
from models.generator.videoar import VideoAR, generate_videoar


def test_the_mixture_is_a_distribution_and_its_target_term_agrees():
    torch.manual_seed(0)
    head = torch.randn(4, 5, 12).log_softmax(-1)
    gate = torch.randn(4, 5)
    copy_from = torch.randint(0, 12, (4, 5))
    copy_from[0] = NO_SOURCE
    targets = torch.where(
        torch.rand(4, 5) < 0.5, copy_from.clamp(min=0), torch.randint(0, 12, (4, 5))
    )
    mixed = copy_mixture_log_probs(head, gate, copy_from)
    torch.testing.assert_close(mixed.logsumexp(-1), torch.zeros(4, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[0], head[0])  # no previous frame: the head alone
    per_target = copy_mixture_log_prob(
        head.gather(-1, targets[..., None])[..., 0], gate, targets, copy_from
    )
    torch.testing.assert_close(per_target, mixed.gather(-1, targets[..., None])[..., 0])
    # By hand: p = g [y == source] + (1 - g) p_head(y).
    g = torch.sigmoid(gate[1, 2])
    hit = float(targets[1, 2] == copy_from[1, 2])
    expected = torch.log(g * hit + (1 - g) * head[1, 2, targets[1, 2]].exp())
    torch.testing.assert_close(per_target[1, 2], expected)


def test_digit_transitions_read_the_source_digits_and_a_row_for_no_source():
    table = DigitTransition([4, 3])
    for i, emb in enumerate(table.tables):
        emb.weight.data = (
            torch.arange(emb.weight.numel(), dtype=torch.float).view_as(emb.weight) + 100 * i
        )
    source = torch.tensor([1 + 4 * 2, NO_SOURCE])  # digits (1, 2); none
    out = table(source) / TABLE_GAIN
    torch.testing.assert_close(out[0, :4], table.tables[0].weight[1])
    torch.testing.assert_close(out[0, 4:], table.tables[1].weight[2])
    torch.testing.assert_close(out[1, :4], table.tables[0].weight[4])  # the no-source rows
    torch.testing.assert_close(out[1, 4:], table.tables[1].weight[3])


@pytest.mark.parametrize("head", ["digits", "vocab"])
def test_the_loss_is_the_cross_entropy_of_the_mixture_in_value_and_gradient(head):
    torch.manual_seed(0)
    digits = {"output_head": "digits", "output_levels": [4, 4]} if head == "digits" else {}
    model = Generator(
        GeneratorConfig(
            vocab_size=16, num_classes=2, n_layer=1, n_head=2, n_embd=16, copy_previous=True,
            **digits,
        )
    )  # fmt: skip
    if model.digit_transition is not None:
        for emb in model.digit_transition.tables:  # non-zero, so that they are checked too
            torch.nn.init.normal_(emb.weight)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    copy_from = torch.randint(0, 16, (3, 7))
    copy_from[:, :2] = NO_SOURCE
    targets = torch.where(
        torch.rand(3, 7) < 0.5, copy_from.clamp(min=0), torch.randint(0, 16, (3, 7))
    )
    loss = model.token_loss(hidden, targets, copy_from=copy_from)
    (grad,) = torch.autograd.grad(loss, hidden)
    full = F.cross_entropy(
        model.project_to_vocab(hidden, copy_from).flatten(0, 1), targets.flatten()
    )
    (full_grad,) = torch.autograd.grad(full, hidden)
    torch.testing.assert_close(loss, full)
    torch.testing.assert_close(grad, full_grad)
    with pytest.raises(ValueError, match="copy head .* needs the copy"):
        model.project_to_vocab(hidden)
    with pytest.raises(ValueError, match="copy head .* needs the copy"):
        model.token_loss(hidden, targets)


def _videoar() -> VideoAR:
    torch.manual_seed(0)
    generator = Generator(
        GeneratorConfig(
            vocab_size=16, output_head="digits", output_levels=[4, 4], num_classes=3,
            n_layer=2, n_head=2, n_embd=32, label_dropout=0.0, copy_previous=True,
        )
    )  # fmt: skip
    for emb in generator.digit_transition.tables:
        torch.nn.init.normal_(emb.weight)
    config = VideoARConfig(levels=[4, 4], scales=[1, 2, 4], latent_hw=(4, 4))
    return VideoAR(generator, config).eval()


def test_the_copy_source_is_the_same_token_one_frame_earlier():
    model = _videoar()
    indices = [torch.randint(0, 16, (2, 3, s, s)) for s in (1, 2, 4)]
    source = model.unflatten(model.copy_source(indices), 3)
    for k in range(3):
        assert bool((source[k][:, 0] == NO_SOURCE).all())
        assert torch.equal(source[k][:, 1:], indices[k][:, :-1])


@pytest.mark.parametrize("cfg_scale", [None, 2.0])
def test_cached_sampling_with_a_copy_head_matches_the_full_forward_and_its_loss(cfg_scale):
    model = _videoar()
    labels = torch.tensor([0, 2])
    sample = generate_videoar(
        model, 3, labels, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(1),
        return_logits=True,
    )  # fmt: skip
    with torch.no_grad():
        log_probs, targets = model(sample.indices, labels, perturb=False)
        loss = model.loss(sample.indices, labels, perturb=False)
    if cfg_scale is None:  # guided logits are no single forward's; their shape still is
        torch.testing.assert_close(sample.logits, log_probs, atol=1e-4, rtol=0)
    assert sample.logits.shape == log_probs.shape
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(2, 63), atol=1e-5, rtol=0)
    expected = F.cross_entropy(log_probs.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


def test_a_copy_head_decodes_eagerly_only():
    with pytest.raises(ValueError, match="copy head .* decodes eagerly only"):
        generate_videoar(_videoar(), 2, torch.tensor([0]), decode="static")
