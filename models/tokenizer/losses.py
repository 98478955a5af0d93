"""Tokenizer training losses: L1 + L2 reconstruction, optional perceptual, hinge GAN.

The adversarial term joins at `gan_start_step` with the VQGAN-style adaptive weight
||grad_last rec|| / ||grad_last gan||, which keeps the GAN gradient at the decoder's output layer
on the scale of the reconstruction gradient whatever the raw loss magnitudes.

Typical step (two optimizers; the trainer owns them):

    reconstruction, aux = tokenizer(video)
    g_loss, logs = loss.generator_loss(video, reconstruction, tokenizer.last_layer, step)
    g_loss.backward(); opt_g.step()                # also fills D's .grad: zero it next
    opt_d.zero_grad()
    d_loss, d_logs = loss.discriminator_loss(video, reconstruction, step)
    if loss.gan_active(step): d_loss.backward(); opt_d.step()

FSQ has no codebook and so no commitment or codebook loss; the quantizer regularisers of
VQ tokenizers are not needed here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.tokenizer.config import LossConfig
from models.tokenizer.discriminator import PatchDiscriminator3d
from models.tokenizer.perceptual import build_perceptual_loss


def reconstruction_loss(
    reconstruction: Tensor, target: Tensor, l1_weight: float = 1.0, l2_weight: float = 1.0
) -> Tensor:
    """Weighted L1 + L2 (mean absolute and mean squared error) in float32."""
    diff = reconstruction.float() - target.float()
    return l1_weight * diff.abs().mean() + l2_weight * diff.pow(2).mean()


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: push real logits above 1 and fake ones below -1."""
    return F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean()


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator side of the hinge GAN: raise the discriminator's logits on reconstructions."""
    return -logits_fake.float().mean()


def adaptive_gan_weight(
    rec_loss: Tensor,
    gan_loss: Tensor,
    last_layer: Tensor,
    step: int,
    start_step: int,
    max_weight: float = 1e4,
) -> Tensor:
    """||d rec / d last|| / ||d gan / d last||, clamped, detached; 0 before `start_step`."""
    if step < start_step:
        return torch.zeros((), device=rec_loss.device)
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


class TokenizerLoss(nn.Module):
    """Holds the discriminator and the optional perceptual network; computes both sides' losses."""

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config
        self.discriminator = PatchDiscriminator3d(config.discriminator)
        self.perceptual = build_perceptual_loss(config.perceptual_weights_path)

    def gan_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at this step (after the warm-up; never at
        gan_weight 0, so that neither the discriminator nor its step costs anything)."""
        return self.config.gan_weight > 0 and step >= self.config.gan_start_step

    def generator_loss(
        self, video: Tensor, reconstruction: Tensor, last_layer: Tensor, step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Autoencoder loss (scalar) and detached parts for logging."""
        cfg = self.config
        rec = reconstruction_loss(reconstruction, video, cfg.l1_weight, cfg.l2_weight)
        logs = {"loss/reconstruction": rec.detach()}
        if self.perceptual is not None:
            perceptual = self.perceptual(reconstruction.float(), video.float())
            rec = rec + cfg.perceptual_weight * perceptual
            logs["loss/perceptual"] = perceptual.detach()
        total = rec
        if self.gan_active(step):
            gan = hinge_g_loss(self.discriminator(reconstruction))
            weight = cfg.gan_weight * adaptive_gan_weight(
                rec, gan, last_layer, step, cfg.gan_start_step, cfg.adaptive_weight_max
            )
            total = total + weight * gan
            logs.update({"loss/generator_gan": gan.detach(), "gan_weight": weight})
        else:
            logs["gan_weight"] = torch.zeros((), device=video.device)
        logs["loss/generator_total"] = total.detach()
        return total, logs

    def discriminator_loss(
        self, video: Tensor, reconstruction: Tensor, step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of the discriminator on real clips vs (detached) reconstructions; 0 in warm-up."""
        if not self.gan_active(step):
            zero = torch.zeros((), device=video.device)
            return zero, {"loss/discriminator": zero}
        logits_real = self.discriminator(video.detach())
        logits_fake = self.discriminator(reconstruction.detach())
        loss = hinge_d_loss(logits_real, logits_fake)
        return loss, {
            "loss/discriminator": loss.detach(),
            "logits/real": logits_real.detach().float().mean(),
            "logits/fake": logits_fake.detach().float().mean(),
        }
