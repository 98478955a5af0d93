"""Ingestion config: where videos come from, which ones pass, how they become clips and shards."""

from __future__ import annotations

from pydantic import Field, model_validator

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
