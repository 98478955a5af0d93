"""Video tokenizer: causal 3D CNN with FSQ and multi-scale residual FSQ.

Names load from their submodule on first use, so that `models.tokenizer.config` (the configs,
pydantic only) imports without torch; `from models.tokenizer import VideoTokenizer` works as usual.
"""

from __future__ import annotations

from models.lazy_exports import lazy_exports

_SUBMODULE_OF = {
    "DiscriminatorConfig": "config",
    "LossConfig": "config",
    "TokenizerConfig": "config",
    "PatchDiscriminator3d": "discriminator",
    "FSQ": "fsq",
    "TokenizerLoss": "losses",
    "adaptive_gan_weight": "losses",
    "hinge_d_loss": "losses",
    "hinge_g_loss": "losses",
    "reconstruction_loss": "losses",
    "code_usage": "metrics",
    "psnr": "metrics",
    "ssim": "metrics",
    "MultiScaleFSQ": "multiscale",
    "ScaleStatistics": "multiscale",
    "scale_shapes": "multiscale",
    "PerceptualLoss": "perceptual",
    "build_perceptual_loss": "perceptual",
    "TokenizerEncoding": "tokenizer",
    "VideoTokenizer": "tokenizer",
    "load_tokenizer_from_dir": "tokenizer",
    "save_tokenizer": "tokenizer",
}

__all__ = sorted(_SUBMODULE_OF)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _SUBMODULE_OF)
