"""PatchGAN-style 3D discriminator: one real/fake logit per space-time patch."""

from __future__ import annotations

import math

from torch import Tensor, nn

from models.tokenizer.config import DiscriminatorConfig


class PatchDiscriminator3d(nn.Module):
    """Video (B, C, T, H, W) -> logits (B, 1, T', H', W'), one per overlapping patch."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        kernel, padding = (3, 4, 4), (1, 1, 1)  # kernel 3 in time so a single frame still fits
        widths = [config.base_channels * min(2**i, 8) for i in range(config.num_layers + 1)]
        layers: list[nn.Module] = [
            nn.Conv3d(config.in_channels, widths[0], kernel, stride=2, padding=padding),
            nn.LeakyReLU(0.2),
        ]
        for i in range(1, config.num_layers + 1):
            stride = 2 if i < config.num_layers else 1  # the last block only widens, like PatchGAN
            layers += [
                nn.Conv3d(
                    widths[i - 1], widths[i], kernel, stride=stride, padding=padding, bias=False
                ),
                nn.GroupNorm(math.gcd(config.max_norm_groups, widths[i]), widths[i]),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv3d(widths[-1], 1, kernel, stride=1, padding=padding))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, video: Tensor) -> Tensor:
        return self.net(video)
