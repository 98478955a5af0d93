import torch
import torch.nn.functional as F

from models.tokenizer.multiscale import MultiScaleFSQ, default_scale_gains, scale_shapes

LEVELS = [8, 8, 8, 5, 5, 5]
SCALES = [1, 2, 4, 8, 16]


def random_latent(batch: int = 4, frames: int = 2, side: int = 16) -> torch.Tensor:
    """A continuous latent in code units, (B, D, t, h, w)."""
    return torch.tanh(
        torch.randn(batch, 6, frames, side, side, generator=torch.Generator().manual_seed(0))
    )


def test_latent_error_falls_with_every_added_scale():
    quantizer = MultiScaleFSQ(LEVELS, SCALES)
    y = random_latent()
    _, indices = quantizer.quantize_residual(y)
    errors = [
        (quantizer.accumulate(indices[:k], (16, 16)) - y).pow(2).mean().item() for k in range(1, 6)
    ]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.5 * y.pow(2).mean().item()


def test_rebuild_from_indices_equals_quantizer_output_exactly():
    quantizer = MultiScaleFSQ(LEVELS, SCALES, upsample_mode="bicubic")
    z = torch.randn(2, 6, 3, 16, 16)
    quantized, _, indices = quantizer(z)
    # A fresh quantizer stands for the generator: same config, no shared state.
    rebuilt = MultiScaleFSQ(LEVELS, SCALES, upsample_mode="bicubic").accumulate(indices, (16, 16))
    assert torch.equal(rebuilt, quantized)
    assert [tuple(i.shape) for i in indices] == [(2, 3, s, s) for s in SCALES]


def test_next_scale_input_is_area_downsample_of_the_cumulative_latent():
    quantizer = MultiScaleFSQ(LEVELS, SCALES)
    _, _, indices = quantizer(torch.randn(2, 6, 2, 16, 16))
    inputs = quantizer.next_scale_inputs(indices, (16, 16))
    assert len(inputs) == len(SCALES) - 1
    for k in range(1, len(SCALES)):
        cumulative = quantizer.accumulate(indices[:k], (16, 16))  # (B, D, t, 16, 16)
        frames = cumulative.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B t, D, 16, 16)
        expected = F.avg_pool2d(frames, 16 // SCALES[k]).unflatten(0, (2, 2)).permute(0, 2, 1, 3, 4)
        assert torch.allclose(inputs[k - 1], expected, atol=1e-6)
        assert torch.equal(inputs[k - 1], quantizer.next_scale_input(cumulative, k))


def test_scales_quantize_each_latent_frame_independently():
    quantizer = MultiScaleFSQ(LEVELS, SCALES)
    z = torch.randn(1, 6, 3, 16, 16)
    _, _, together = quantizer(z)
    _, _, alone = quantizer(z[:, :, 1:2])
    for k in range(len(SCALES)):
        assert torch.equal(together[k][:, 1:2], alone[k])


def test_continuing_from_a_partial_accumulation_reproduces_the_later_scales():
    quantizer = MultiScaleFSQ(LEVELS, SCALES)
    y = random_latent(batch=2)
    full, indices = quantizer.quantize_residual(y)
    partial = quantizer.accumulate(indices[:2], (16, 16))
    rest_acc, rest = quantizer.quantize_residual(y, accumulated=partial, start_scale=2)
    assert all(torch.equal(a, b) for a, b in zip(rest, indices[2:], strict=True))
    assert torch.allclose(rest_acc, full, atol=1e-6)


def test_gains_keep_fine_scales_from_collapsing_to_the_zero_code():
    y = random_latent(batch=8)
    zero = MultiScaleFSQ(LEVELS, SCALES).fsq.zero_index()
    finest_zero_share = {}
    for name, gains in (("unit", [1.0] * 5), ("default", default_scale_gains(SCALES))):
        _, indices = MultiScaleFSQ(LEVELS, SCALES, gains).quantize_residual(y * 0.3)
        finest_zero_share[name] = (indices[3] == zero).float().mean().item()
    assert finest_zero_share["default"] < 0.5 * finest_zero_share["unit"], finest_zero_share


def test_quantized_latent_passes_gradient_straight_to_the_continuous_one():
    quantizer = MultiScaleFSQ(LEVELS, SCALES)
    z = torch.randn(1, 6, 1, 16, 16, requires_grad=True)
    quantized, continuous, _ = quantizer(z)
    weights = torch.randn_like(quantized)
    (quantized * weights).sum().backward(retain_graph=True)
    grad_via_quantized = z.grad.clone()
    z.grad = None
    (continuous * weights).sum().backward()
    assert torch.allclose(grad_via_quantized, z.grad)


def test_scale_shapes_scale_proportionally_and_end_at_the_latent():
    assert scale_shapes(SCALES, 16, 16) == [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16)]
    assert scale_shapes(SCALES, 8, 12) == [(1, 1), (1, 2), (2, 3), (4, 6), (8, 12)]


def test_rebuild_rejects_indices_of_the_wrong_shape():
    quantizer = MultiScaleFSQ(LEVELS, SCALES)
    bad = [torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 3, 3, dtype=torch.long)]
    try:
        quantizer.accumulate(bad, (16, 16))
    except ValueError as error:
        assert "scale 1" in str(error) and "(2, 2)" in str(error)
    else:
        raise AssertionError("accumulate accepted 3x3 indices for a 2x2 scale")
