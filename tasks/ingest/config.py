"""Ingestion config: where videos come from, which ones pass, how they become clips and shards."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tasks.config import StrictModel


class IngestConfig(StrictModel):
    """Everything `arvid ingest` needs besides storage and tracking settings."""

    source: str = Field(
        description="a local folder, an s3:// prefix, a .jsonl/.csv manifest, or a folder/prefix of webdataset .tar shards"
    )
    output_root: str = Field(
        description="datasets root; the dataset lands at <output_root>/<name>/"
    )
    name: str = "demo"
    # Filters, applied to what the container header says and re-checked after decoding.
    min_duration_s: float = Field(1.0, ge=0)
    max_duration_s: float | None = Field(None, gt=0)
    min_height: int = Field(32, ge=1)
    min_width: int = Field(32, ge=1)
    max_pixels: int = Field(
        1920 * 1080, ge=1, description="width*height bound; larger videos are rejected"
    )
    # Resampling and clipping.
    fps: float = Field(8.0, gt=0, description="clips are resampled to this frame rate")
    clip_frames: int = Field(
        17, ge=1, description="frames per clip (17 = 1 + 4*4 fits a 4x causal tokenizer)"
    )
    clip_stride: int | None = Field(
        None, ge=1, description="frames between clip starts; default clip_frames"
    )
    resize_short_side: int | None = Field(
        None, ge=8, description="resize so the short side is this (even) size"
    )
    # Output.
    inputs_per_shard: int = Field(
        16, ge=1, description="inputs batched into one shard (fixed, so resuming is deterministic)"
    )
    clip_crf: int = Field(18, ge=0, le=51)
    clip_preset: str = "ultrafast"
    # Execution.
    workers: int = Field(2, ge=1)
    decode_timeout_s: float = Field(
        120.0, gt=0, description="a worker stuck longer on one input is killed"
    )
    strict_frame_count: bool = Field(
        False,
        description="quarantine a video that decodes fewer frames than its header promises; by "
        "default its clips that decode cleanly are kept, marked partial in the manifest",
    )
    progress: bool = True

    @model_validator(mode="after")
    def _check_ranges(self) -> IngestConfig:
        if self.max_duration_s is not None and self.max_duration_s < self.min_duration_s:
            raise ValueError(
                f"max_duration_s={self.max_duration_s} is below min_duration_s={self.min_duration_s}"
            )
        if self.resize_short_side is not None and self.resize_short_side % 2:
            raise ValueError(
                f"resize_short_side={self.resize_short_side} must be even (yuv420p clips)"
            )
        return self

    @property
    def stride(self) -> int:
        """Frames between clip starts."""
        return self.clip_stride or self.clip_frames


MOTION_CLASSES: tuple[str, ...] = (
    "left",
    "right",
    "up",
    "down",
    "rotate",
    "orbit",
    "bounce",
    "zoom_in",
    "zoom_out",
)
DEFAULT_CLASSES: tuple[str, ...] = (
    "left",
    "right",
    "up",
    "down",
    "rotate",
    "orbit",
    "zoom_in",
    "zoom_out",
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "digit")


class SyntheticDatasetConfig(StrictModel):
    """What `make_synthetic_dataset` draws: how many videos, their size, timing and classes."""

    count: int = Field(64, ge=0, description="number of videos")
    width: int = Field(64, ge=2, description="frame width in pixels (even: yuv420p)")
    height: int = Field(64, ge=2, description="frame height in pixels (even: yuv420p)")
    fps: float = Field(8.0, gt=0, description="frames per second")
    frames: int = Field(33, ge=1, description="frames per video")
    seed: int = Field(0, ge=0, description="every pixel of every video follows from this")
    classes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CLASSES),
        description=f"motion classes, video i gets classes[i % len]; from {MOTION_CLASSES}",
    )
    shapes: list[str] = Field(default_factory=lambda: list(SHAPES), description="object kinds")
    codec: str = Field("libx264", description="video encoder (PyAV/FFmpeg name)")
    crf: int = Field(20, ge=0, le=63, description="encoder quality, lower is better")
    preset: str = Field("medium", description="x264/x265 speed preset, e.g. ultrafast")

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int, info: ValidationInfo) -> int:
        if value % 2:
            raise ValueError(
                f"{info.field_name}={value} is odd; yuv420p needs even frame sizes "
                f"(use {value - 1} or {value + 1})"
            )
        return value

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"classes is empty; pick some of {list(MOTION_CLASSES)}")
        unknown = [c for c in value if c not in MOTION_CLASSES]
        if unknown:
            raise ValueError(f"unknown motion classes {unknown}; known: {list(MOTION_CLASSES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"classes has duplicates: {value}")
        return value

    @field_validator("shapes")
    @classmethod
    def _known_shapes(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in SHAPES]
        if not value or unknown:
            raise ValueError(f"shapes must be a non-empty subset of {list(SHAPES)}, got {value}")
        return value

    @model_validator(mode="after")
    def _rotate_needs_asymmetric_shape(self) -> SyntheticDatasetConfig:
        # A spinning circle looks still, so "rotate" would be an unlearnable class.
        if "rotate" in self.classes and self.shapes == ["circle"]:
            raise ValueError("class 'rotate' needs a shape other than 'circle' in shapes")
        return self
