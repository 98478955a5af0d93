import math

import pytest
import torch

from models.tokenizer.metrics import code_usage, psnr, ssim


def test_psnr_matches_the_definition_in_either_value_range():
    target = torch.zeros(2, 3, 1, 4, 4)
    reconstruction = target.clone()
    reconstruction[0] += 0.2  # in [-1, 1] that is 0.1 in [0, 1]: MSE 0.01 -> 20 dB
    reconstruction[1] += 0.02  # -> 40 dB
    assert psnr(reconstruction, target).tolist() == pytest.approx([20.0, 40.0], abs=1e-3)
    unit = psnr((reconstruction + 1) / 2, (target + 1) / 2, value_range=(0.0, 1.0))
    assert unit.tolist() == pytest.approx([20.0, 40.0], abs=1e-3)


def test_ssim_is_one_for_identical_videos_and_falls_with_noise():
    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool3d(
        torch.rand(1, 3, 3, 36, 36) * 2 - 1, (1, 5, 5), stride=1
    )
    assert ssim(smooth, smooth).item() == pytest.approx(1.0, abs=1e-5)
    scores = [
        ssim((smooth + s * torch.randn_like(smooth)).clamp(-1, 1), smooth).item()
        for s in (0.05, 0.2, 0.5)
    ]
    assert scores[0] > scores[1] > scores[2]
    assert 0.0 < scores[2] < 0.5


def test_ssim_is_the_same_for_both_value_range_conventions():
    a, b = torch.rand(2, 1, 3, 2, 24, 24)
    in_unit = ssim(a, b, value_range=(0.0, 1.0))
    in_signed = ssim(a * 2 - 1, b * 2 - 1)
    assert torch.allclose(in_unit, in_signed, atol=1e-5)


def test_code_usage_counts_distinct_codes_overall_and_per_scale():
    scales = [torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 3])]
    stats = code_usage(scales, vocab_size=8, zero_index=0)
    assert stats["code_usage"].item() == 0.5
    assert stats["code_usage/scale0"].item() == 0.125
    assert stats["zero_code_fraction/scale0"].item() == 1.0
    assert stats["zero_code_fraction/scale1"].item() == 0.25
    assert stats["code_perplexity/scale1"].item() == pytest.approx(4.0)
    assert stats["code_perplexity/scale0"].item() == pytest.approx(1.0)
    assert stats["code_perplexity"].item() == pytest.approx(
        math.exp(-(5 / 8) * math.log(5 / 8) - 3 / 8 * math.log(1 / 8))
    )


def test_code_usage_of_ceiling_counts_against_the_tokens_a_scale_has():
    coarse = torch.tensor([[3, 3, 7, 9]])  # 4 tokens, 3 distinct: 3/4 of what 4 tokens can reach
    fine = torch.arange(16).view(1, 16) % 8  # 16 tokens, 8 distinct
    stats = code_usage([coarse, fine], vocab_size=64_000)
    assert stats["code_usage_of_ceiling/scale0"].item() == pytest.approx(0.75)
    assert stats["code_usage_of_ceiling/scale1"].item() == pytest.approx(0.5)
    assert stats["code_usage/scale0"].item() == pytest.approx(3 / 64_000)
