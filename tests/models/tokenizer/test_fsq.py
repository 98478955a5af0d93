import math

import pytest
import torch

from models.tokenizer.fsq import FSQ

LEVELS = [8, 8, 8, 5, 5, 5]


def test_every_index_round_trips_through_its_code():
    fsq = FSQ(LEVELS)
    indices = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(indices)  # (64000, 6)
    assert codes.shape == (64_000, 6)
    assert torch.equal(fsq.codes_to_indices(codes), indices)


def test_number_of_distinct_codes_is_the_product_of_levels():
    fsq = FSQ(LEVELS)
    assert fsq.codebook_size == math.prod(LEVELS) == 64_000
    codes = fsq.indices_to_codes(torch.arange(fsq.codebook_size))
    assert torch.unique(codes, dim=0).shape[0] == 64_000
    # Quantizing a wide spread of inputs never leaves that grid, and reaches every level.
    quantized = fsq(torch.randn(200_000, 6) * 3)
    indices = fsq.codes_to_indices(quantized)
    assert torch.equal(fsq.indices_to_codes(indices), quantized)
    for channel, levels in enumerate(LEVELS):
        assert torch.unique(quantized[:, channel]).numel() == levels


def test_even_levels_are_offset_so_zero_stays_a_code():
    fsq = FSQ([8, 5])
    extremes = fsq(torch.tensor([[-100.0, -100.0], [0.0, 0.0], [100.0, 100.0]]))
    # 8 levels: {-4..3}/4, asymmetric by the half-step offset; 5 levels: {-2..2}/2.
    assert extremes.tolist() == [[-1.0, -1.0], [0.0, 0.0], [0.75, 1.0]]
    assert fsq.zero_index() == int(fsq.codes_to_indices(torch.zeros(2)))


def test_rounding_passes_the_bound_gradient_straight_through():
    fsq = FSQ(LEVELS)
    z = torch.randn(64, 6, requires_grad=True)
    fsq(z).sum().backward()
    # d/dz of bound(z) / (L // 2), as if the rounding were not there.
    half_l = (torch.tensor(LEVELS).float() - 1) * (1 - 1e-3) / 2
    offset = torch.tensor([0.5 if level % 2 == 0 else 0.0 for level in LEVELS])
    shift = torch.atanh(offset / half_l)
    expected = (
        (1 - torch.tanh(z.detach() + shift) ** 2) * half_l / torch.tensor([4.0, 4, 4, 2, 2, 2])
    )
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_quantizer_rejects_levels_below_two():
    with pytest.raises(ValueError, match="levels"):
        FSQ([8, 1])
