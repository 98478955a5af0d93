"""VideoTokenizer: causal 3D CNN autoencoder with an FSQ or multi-scale residual FSQ bottleneck.

    video (B, C, T, H, W) in [-1, 1]          T = 1 + tf * n, H and W multiples of sf
      -> Encoder -> z (B, D, t, h, w)         t = 1 + n, h = H / sf, w = W / sf, D = len(levels)
      -> FSQ / MultiScaleFSQ -> indices, quantized (code units, in [-1, 1])
      -> Decoder -> reconstruction (B, C, T, H, W)

Weights are stored as safetensors plus a JSON config, so loading never unpickles anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.tokenizer.causal3d import Decoder, Encoder
from models.tokenizer.config import TokenizerConfig
from models.tokenizer.metrics import code_usage
from models.tokenizer.multiscale import MultiScaleFSQ

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class TokenizerEncoding:
    """What encode returns; latents are (B, D, t, h, w) in FSQ code units."""

    # single-scale: (B, t, h, w) long; multi-scale: one (B, t, h_k, w_k) per scale.
    indices: Tensor | list[Tensor]
    quantized: Tensor
    # Pre-rounding latent in the same units as `quantized`, so decode() accepts it too.
    continuous: Tensor


class VideoTokenizer(nn.Module):
    """Causal 3D CNN video tokenizer; see the module docstring for shapes."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self._built_config = config
        self.quantizer = config.make_quantizer()
        latent_dim = len(config.levels)
        args = (
            latent_dim,
            config.channels,
            config.num_res_blocks,
            config.temporal_factor,
            config.max_norm_groups,
            config.shortcuts,
        )
        patch = config.patch_size
        self.encoder = Encoder(config.in_channels, *args, patch_size=patch)
        self.decoder = Decoder(
            config.in_channels, *args, linear_output=config.linear_output, patch_size=patch
        )

    @property
    def config(self) -> TokenizerConfig:
        """The config this tokenizer was built from, holding the quantizer's current gains: what
        a saved config.json pins, and what rebuilds its tokens from indices alone."""
        if isinstance(self.quantizer, MultiScaleFSQ):
            gains = self.quantizer.gain_values()
            if gains != self._built_config.scale_gains:
                return self._built_config.model_copy(update={"scale_gains": gains})
        return self._built_config

    @property
    def built_config(self) -> TokenizerConfig:
        """The config exactly as given to the constructor (a training run's identity)."""
        return self._built_config

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame (after the first, which stands alone)."""
        return self.config.temporal_factor

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along height and width."""
        return self.config.spatial_factor

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids (the same at every scale)."""
        return math.prod(self.config.levels)

    @property
    def latent_dim(self) -> int:
        """Channels of the latent (FSQ dimension)."""
        return len(self.config.levels)

    @property
    def scales(self) -> list[int] | None:
        """Residual scales, coarse to fine, or None for single-scale FSQ."""
        return None if self.config.scales is None else list(self.config.scales)

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's output conv, for the adaptive GAN weight."""
        return self.decoder.conv_out.conv.weight

    def check_input_shape(self, frames: int, height: int, width: int) -> None:
        """Raise ValueError naming the size and the rule if a T x H x W clip cannot be encoded."""
        self.config.check_clip_shape(frames, height, width)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the latent grid for a T x H x W clip."""
        return self.config.latent_shape(frames, height, width)

    def scale_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h_k, w_k) per scale for an h x w latent frame (one entry for single-scale)."""
        if isinstance(self.quantizer, MultiScaleFSQ):
            return self.quantizer.scale_shapes(height, width)
        return [(height, width)]

    def encode(self, video: Tensor) -> TokenizerEncoding:
        """Video (B, C, T, H, W) in [-1, 1] -> indices, quantized and continuous latents."""
        if video.ndim != 5 or video.shape[1] != self.config.in_channels:
            raise ValueError(
                f"video of shape {tuple(video.shape)}: expected (B, {self.config.in_channels}, T, H, W)"
            )
        self.check_input_shape(*video.shape[2:])
        z = self.encoder(video)  # (B, D, t, h, w)
        if isinstance(self.quantizer, MultiScaleFSQ):
            quantized, continuous, indices = self.quantizer(z)
            return TokenizerEncoding(indices=indices, quantized=quantized, continuous=continuous)
        z_last = rearrange(z, "b d t h w -> b t h w d")
        codes = self.quantizer(z_last)  # (B, t, h, w, D)
        return TokenizerEncoding(
            indices=self.quantizer.codes_to_indices(codes.detach()),
            quantized=rearrange(codes, "b t h w d -> b d t h w"),
            continuous=rearrange(self.quantizer.continuous(z_last), "b t h w d -> b d t h w"),
        )

    def decode(self, latent: Tensor) -> Tensor:
        """Latent (B, D, t, h, w) in code units (quantized or continuous) -> video (B, C, T, H, W)."""
        return self.decoder(latent)

    def indices_to_latent(self, indices: Tensor | list[Tensor]) -> Tensor:
        """Token ids (as in TokenizerEncoding.indices, all scales) -> quantized latent (B, D, t, h, w)."""
        if isinstance(self.quantizer, MultiScaleFSQ):
            if not isinstance(indices, list | tuple) or len(indices) != self.quantizer.num_scales:
                got = len(indices) if isinstance(indices, list | tuple) else "a single tensor"
                raise ValueError(
                    f"multi-scale tokenizer needs indices for all {self.quantizer.num_scales} scales; got {got}"
                )
            return self.quantizer.accumulate(indices, tuple(indices[-1].shape[-2:]))
        if not isinstance(indices, Tensor):
            raise ValueError("single-scale tokenizer needs one (B, t, h, w) index tensor")
        return rearrange(self.quantizer.indices_to_codes(indices), "b t h w d -> b d t h w")

    def decode_indices(self, indices: Tensor | list[Tensor]) -> Tensor:
        """Token ids -> video (B, C, T, H, W)."""
        return self.decode(self.indices_to_latent(indices))

    def forward(self, video: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Video -> (reconstruction, aux) where aux holds detached quantizer statistics.

        In training mode a calibrating multi-scale quantizer also moves its gains to this
        batch's residuals (for the next step; this one used the gains it was quantized with).
        """
        encoding = self.encode(video)
        reconstruction = self.decode(encoding.quantized)
        with torch.no_grad():
            aux = {"quantization_mse": (encoding.quantized - encoding.continuous).pow(2).mean()}
            zero = self.quantizer.zero_index()
            aux.update(code_usage(encoding.indices, self.vocab_size, zero_index=zero))
            if isinstance(self.quantizer, MultiScaleFSQ):
                quantizer = self.quantizer
                stats = (
                    quantizer.observe(encoding.continuous)
                    if self.training
                    else quantizer.statistics(encoding.continuous)
                )
                for k in range(quantizer.num_scales):
                    aux[f"residual_rms/scale{k}"] = stats.residual_rms[k]
                    aux[f"saturation/scale{k}"] = stats.saturation[k]
                    aux[f"gain/scale{k}"] = quantizer.gains[k].clone()
        return reconstruction, aux


def save_tokenizer(tokenizer: VideoTokenizer, directory: str | Path) -> None:
    """Write `model.safetensors` and `config.json` into a local directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().contiguous().cpu() for name, tensor in tokenizer.state_dict().items()
    }
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(tokenizer.config.model_dump(), indent=2) + "\n")


def load_tokenizer_from_dir(
    directory: str | Path, device: str | torch.device = "cpu"
) -> VideoTokenizer:
    """Build a VideoTokenizer from `config.json` and load `model.safetensors` (no unpickling)."""
    directory = Path(directory)
    raw = json.loads((directory / CONFIG_FILE).read_text())
    # Saved before the decoder had a linear output path: their weights have none.
    raw.setdefault("linear_output", False)
    config = TokenizerConfig.model_validate(raw)
    tokenizer = VideoTokenizer(config)
    tokenizer.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=str(device)))
    return tokenizer.to(device)
