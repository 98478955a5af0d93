import pytest
import torch
import torch.nn.functional as F

from models.generator.chunked_loss import chunked_cross_entropy


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_chunked_cross_entropy_equals_full_logits_value_and_gradients(chunk_rows):
    torch.manual_seed(0)
    hidden = torch.randn(3, 21, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 21))

    full = F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten())
    full_grads = torch.autograd.grad(full, (hidden, weight))
    chunked = chunked_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))

    assert torch.allclose(chunked.double(), full, atol=1e-6)
    for a, b in zip(chunked_grads, full_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_chunked_cross_entropy_rejects_mismatched_rows_and_bad_chunks():
    hidden, weight = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="4 rows, targets 5"):
        chunked_cross_entropy(hidden, weight, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_rows=0"):
        chunked_cross_entropy(hidden, weight, torch.zeros(4, dtype=torch.long), chunk_rows=0)


def test_generator_hidden_states_with_the_chunked_loss_and_recomputed_blocks_match_the_plain_path():
    from models.generator.config import GeneratorConfig
    from models.generator.schedules import ntp
    from models.generator.transformer import Generator

    torch.manual_seed(0)
    model = Generator(GeneratorConfig(vocab_size=32, num_classes=2, n_layer=2, n_head=2, n_embd=16))
    schedule = ntp((2, 2, 2))
    targets = torch.randint(0, 32, (3, schedule.num_tokens))
    inputs = schedule.input_ids(targets, 32)
    labels = torch.tensor([0, 1, 2])

    def grads(chunked: bool, recompute: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        model.checkpoint_blocks = recompute
        torch.manual_seed(1)  # the same label dropout draws
        out = model(inputs, schedule.coords, schedule.group, labels, return_hidden=chunked)
        if chunked:
            loss = chunked_cross_entropy(out, model.head.weight, targets, chunk_rows=5)
        else:
            loss = F.cross_entropy(out.flatten(0, 1), targets.flatten())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain_loss, plain = grads(chunked=False, recompute=False)
    lean_loss, lean = grads(chunked=True, recompute=True)
    assert torch.allclose(plain_loss, lean_loss, atol=1e-6)
    assert len(plain) == len(lean)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, lean, strict=True))
