"""Loss in bits per token and the train step."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.generator import Generator, GeneratorConfig
from models.generator.loss import evaluate_bits_per_token, sequence_loss, train_step
from models.generator.schedules import nbp, par
from tests.models.generator.test_transformer import GRID, VOCAB, full_forward, tiny_model


def small_trainable_model() -> Generator:
    torch.manual_seed(0)
    config = GeneratorConfig(
        vocab_size=VOCAB, num_classes=3, n_layer=2, n_head=2, n_embd=32, max_learned_inputs=8
    )
    return Generator(config)


def test_untrained_model_costs_about_log2_vocab_bits_per_token():
    model = small_trainable_model()
    tokens = torch.randint(0, VOCAB, (4, *GRID))
    bits = evaluate_bits_per_token(model, tokens, torch.tensor([0, 1, 2, 0]), nbp(GRID, (1, 1, 4)))
    assert abs(bits - math.log2(VOCAB)) < 0.1


@pytest.mark.parametrize(
    "schedule",
    [par(GRID, 4), nbp(GRID, (1, 1, 4), hybrid_prefix=4), par(GRID, 4, prefix="clip")],
    ids=lambda s: s.name,
)
def test_train_step_reduces_loss_on_a_tiny_overfit_batch(schedule):
    model = small_trainable_model()
    batch = {"tokens": torch.randint(0, VOCAB, (4, *GRID)), "labels": torch.tensor([0, 1, 2, 0])}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = [
        train_step(model, batch, optimizer, schedule)["loss_bits_per_token"] for _ in range(40)
    ]
    assert history[0] > 5.5
    assert history[-1] < 0.5 * history[0]
    assert model.training


def test_context_frames_are_left_out_of_the_loss():
    model = tiny_model()
    schedule = nbp(GRID, (1, 1, 4))
    tokens = torch.randint(0, VOCAB, (2, *GRID))
    labels = torch.tensor([0, 1])
    targets = schedule.tokens_to_sequence(tokens)
    with torch.no_grad():
        logits = full_forward(model, schedule, targets, labels)
        loss = sequence_loss(model, tokens, labels, schedule, context_frames=1)
    expected = F.cross_entropy(logits[:, 16:].flatten(0, 1), targets[:, 16:].flatten())
    torch.testing.assert_close(loss, expected)
    everything = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert abs(float(loss - everything)) > 1e-3
