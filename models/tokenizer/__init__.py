"""Video tokenizer: causal 3D CNN with FSQ and multi-scale residual FSQ."""

from models.tokenizer.discriminator import DiscriminatorConfig, PatchDiscriminator3d
from models.tokenizer.fsq import FSQ
from models.tokenizer.losses import (
    LossConfig,
    TokenizerLoss,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    reconstruction_loss,
)
from models.tokenizer.metrics import code_usage, psnr, ssim
from models.tokenizer.multiscale import MultiScaleFSQ, scale_shapes
from models.tokenizer.perceptual import PerceptualLoss, build_perceptual_loss
from models.tokenizer.tokenizer import (
    TokenizerConfig,
    TokenizerEncoding,
    VideoTokenizer,
    load_tokenizer_from_dir,
    save_tokenizer,
)

__all__ = [
    "FSQ",
    "DiscriminatorConfig",
    "LossConfig",
    "MultiScaleFSQ",
    "PatchDiscriminator3d",
    "PerceptualLoss",
    "TokenizerConfig",
    "TokenizerEncoding",
    "TokenizerLoss",
    "VideoTokenizer",
    "adaptive_gan_weight",
    "build_perceptual_loss",
    "code_usage",
    "hinge_d_loss",
    "hinge_g_loss",
    "load_tokenizer_from_dir",
    "psnr",
    "reconstruction_loss",
    "save_tokenizer",
    "scale_shapes",
    "ssim",
]
