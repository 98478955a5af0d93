import math

import pytest
import torch
from safetensors.torch import save_file

from models.tokenizer.discriminator import DiscriminatorConfig, PatchDiscriminator3d
from models.tokenizer.losses import (
    LossConfig,
    TokenizerLoss,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    reconstruction_loss,
)
from models.tokenizer.perceptual import PerceptualLoss, build_perceptual_loss, vgg16_features
from models.tokenizer.tokenizer import TokenizerConfig, VideoTokenizer

SMALL_D = DiscriminatorConfig(base_channels=4, num_layers=2)


def tiny_tokenizer() -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(
        TokenizerConfig(base_channels=4, channel_multipliers=[1, 2, 2, 4], num_res_blocks=1)
    )


def clip() -> torch.Tensor:
    return torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_reconstruction_loss_is_weighted_l1_plus_l2():
    target = torch.zeros(1, 3, 1, 2, 2)
    reconstruction = torch.full_like(target, 0.5)
    assert reconstruction_loss(reconstruction, target).item() == pytest.approx(0.5 + 0.25)
    assert reconstruction_loss(reconstruction, target, 2.0, 0.0).item() == pytest.approx(1.0)


def test_hinge_losses_saturate_beyond_the_margin():
    assert hinge_d_loss(torch.tensor([2.0]), torch.tensor([-3.0])).item() == 0.0
    assert hinge_d_loss(torch.tensor([0.0]), torch.tensor([0.5])).item() == pytest.approx(1.0 + 1.5)
    assert hinge_g_loss(torch.tensor([1.0, 3.0])).item() == -2.0


def test_discriminator_scores_patches_of_clips_and_single_frames():
    discriminator = PatchDiscriminator3d(SMALL_D)
    assert discriminator(clip()).shape == (2, 1, 2, 6, 6)
    assert discriminator(clip()[:, :, :1]).shape == (2, 1, 1, 6, 6)


def test_adaptive_weight_is_zero_before_warmup_and_balances_gradients_after():
    last = torch.randn(4, requires_grad=True)
    rec = (last * 3.0).sum()
    gan = (last * 0.5).sum()
    assert adaptive_gan_weight(rec, gan, last, step=9, start_step=10).item() == 0.0
    # ||grad rec|| / ||grad gan|| = 3 / 0.5.
    assert adaptive_gan_weight(rec, gan, last, step=10, start_step=10).item() == pytest.approx(
        6.0, rel=1e-3
    )


def test_loss_step_runs_and_is_finite_before_and_after_gan_warmup():
    tokenizer = tiny_tokenizer()
    loss = TokenizerLoss(LossConfig(gan_start_step=1, discriminator=SMALL_D))
    opt_g = torch.optim.Adam(tokenizer.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=1e-3)
    video = clip()
    for step in (0, 1):
        reconstruction, _ = tokenizer(video)
        g_loss, logs = loss.generator_loss(video, reconstruction, tokenizer.last_layer, step)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        opt_d.zero_grad()
        d_loss, d_logs = loss.discriminator_loss(video, reconstruction, step)
        assert loss.gan_active(step) == (step == 1)
        if loss.gan_active(step):
            d_loss.backward()
            grads = [p.grad for p in loss.discriminator.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            opt_d.step()
        assert all(math.isfinite(v.item()) for v in (logs | d_logs).values())
        assert torch.isfinite(g_loss)
        if step == 0:
            assert logs["gan_weight"].item() == 0.0 and d_loss.item() == 0.0
        else:
            assert logs["gan_weight"].item() > 0.0 and d_loss.item() > 0.0


def test_a_zero_gan_weight_keeps_the_gan_off_at_every_step():
    tokenizer = tiny_tokenizer()
    loss = TokenizerLoss(LossConfig(gan_weight=0.0, gan_start_step=0, discriminator=SMALL_D))
    video = clip()
    reconstruction, _ = tokenizer(video)
    for step in (0, 10**6):
        assert not loss.gan_active(step)
        _, logs = loss.generator_loss(video, reconstruction, tokenizer.last_layer, step)
        d_loss, _ = loss.discriminator_loss(video, reconstruction, step)
        assert "loss/generator_gan" not in logs and d_loss.item() == 0.0
    with pytest.raises(ValueError, match="gan_weight"):
        LossConfig(gan_weight=-0.1)


@pytest.fixture
def vgg_file(tmp_path):
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    path = tmp_path / "vgg16.safetensors"
    save_file(state, str(path))
    return path


def test_perceptual_loss_is_off_without_a_weights_file():
    assert build_perceptual_loss(None) is None
    assert TokenizerLoss(LossConfig(discriminator=SMALL_D)).perceptual is None


def test_perceptual_loss_from_a_file_is_zero_on_identical_clips_and_differentiable(vgg_file):
    perceptual = build_perceptual_loss(vgg_file)
    target = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    reconstruction = (target + 0.3 * torch.randn_like(target)).requires_grad_(True)
    assert perceptual(target, target).item() == pytest.approx(0.0, abs=1e-6)
    distance = perceptual(reconstruction, target)
    distance.backward()
    assert distance.item() > 0 and reconstruction.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in perceptual.parameters())


def test_perceptual_loss_rejects_a_file_that_is_not_vgg16(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(path))
    with pytest.raises(ValueError, match="not a VGG16 feature file"):
        PerceptualLoss(path)
