"""LPIPS-style perceptual loss on VGG16 features, from a weights file the user provides.

Nothing is ever downloaded: the loss exists only when a safetensors file is given. The file holds
VGG16 convolution weights under torchvision's names (`features.0.weight`, ..., `features.28.bias`;
`{k: v for k, v in torchvision.models.vgg16(weights=...).state_dict().items() if k.startswith(
"features.")}` saved with `safetensors.torch.save_file` is enough) and, optionally, LPIPS's
per-channel layer weights as `lin0.weight` ... `lin4.weight` (any shape with one value per
channel). Without them every channel weighs 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file
from torch import Tensor, nn

# VGG16 ("D") convolution widths, "M" = 2x2 max-pool; laid out so that nn.Sequential indices
# match torchvision's `features.<i>` names.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# Indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the layers LPIPS compares.
_TAPS = (3, 8, 15, 22, 29)
# LPIPS's input scaling for [-1, 1] images: ImageNet mean and std mapped onto that range.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """The VGG16 convolutional trunk up to relu5_3, with torchvision's layer indices."""
    layers: list[nn.Module] = []
    c_in = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU()]
            c_in = int(item)
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    """Frozen LPIPS-style distance between videos (B, C, T, H, W) in [-1, 1], frame by frame."""

    def __init__(self, weights_path: str | Path):
        super().__init__()
        state = load_file(str(weights_path))
        self.features = vgg16_features()
        vgg_state = {
            k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
        }
        missing = sorted(set(self.features.state_dict()) - set(vgg_state))
        if missing:
            raise ValueError(
                f"{weights_path}: not a VGG16 feature file, missing 'features.{missing[0]}' "
                f"and {len(missing) - 1} more (see models/tokenizer/perceptual.py for the format)"
            )
        self.features.load_state_dict(vgg_state)
        widths = [self.features[i - 1].out_channels for i in _TAPS]
        lin = [
            state.get(f"lin{k}.weight", torch.ones(c)).flatten().float()
            for k, c in enumerate(widths)
        ]
        for k, (w, c) in enumerate(zip(lin, widths, strict=True)):
            if w.numel() != c:
                raise ValueError(
                    f"{weights_path}: lin{k}.weight has {w.numel()} values, expected {c}"
                )
            self.register_buffer(f"lin{k}", w.view(1, c, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Stay in eval mode: the network is a fixed measuring stick."""
        return super().train(False)

    def _taps(self, frames: Tensor) -> list[Tensor]:
        x = (frames - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features[: _TAPS[-1] + 1]):
            x = layer(x)
            if i in _TAPS:
                # Unit-normalise each position's channel vector, as LPIPS does.
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Mean perceptual distance over all frames: two (B, C, T, H, W) -> scalar."""
        x = rearrange(reconstruction, "b c t h w -> (b t) c h w")
        y = rearrange(target, "b c t h w -> (b t) c h w")
        distance = reconstruction.new_zeros(())
        for k, (fx, fy) in enumerate(zip(self._taps(x), self._taps(y), strict=True)):
            distance = distance + ((fx - fy).pow(2) * getattr(self, f"lin{k}")).sum(dim=1).mean()
        return distance


def build_perceptual_loss(weights_path: str | Path | None) -> PerceptualLoss | None:
    """A PerceptualLoss from the given file, or None (loss off) when no file is given."""
    return None if weights_path is None else PerceptualLoss(weights_path)
