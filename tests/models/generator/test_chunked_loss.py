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
