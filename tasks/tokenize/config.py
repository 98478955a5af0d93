"""Tokenization config: which dataset, which tokenizer, what clip shape, and how to spread the work."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config import StrictModel


class TokenizeConfig(StrictModel):
    """Everything `arvid tokenize` needs besides storage, tracking and Ray settings."""

    dataset: str = Field(
        ".arvid/demo/datasets/demo",
        description="ingested dataset: <output_root>/<name> (latest version) or <output_root>/<name>@<version>",
    )
    tokenizer: str = Field(
        "models:/arvid-tokenizer@champion",
        description="models:/name@alias, models:/name/<version>, models:/name/latest, runs:/<id>/<path> or a local model folder",
    )
    tokens_root: str = Field(
        ".arvid/demo/tokens",
        description="tokens land at <tokens_root>/<dataset-version>/<tokenizer-version>/<res>x<frames>/",
    )
    resolution: int = Field(
        64, ge=1, description="clips are resized (short side) and center-cropped to this square"
    )
    frames: int = Field(17, ge=1, description="the first `frames` frames of each clip are encoded")
    batch_size: int = Field(8, ge=1, description="clips per encode call of a tokenizer actor")
    latents: bool = Field(
        False,
        description="also store each clip's continuous pre-quantization latent (float32 .npy) "
        "beside its tokens: VideoAR's error correction re-quantizes from it; tokens land in "
        "<res>x<frames>+latent",
    )
    num_actors: int | None = Field(
        None, ge=1, description="None: one per GPU, or one per CPU slot on a cluster without GPUs"
    )
    # Fractional by default: actors that claim every CPU starve the decode tasks (and deadlock
    # Ray on a 2-CPU node); the run refuses sizes that leave no CPU for decoding.
    actor_num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per tokenizer actor")
    decode_num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per decode task")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: one GPU per actor when the cluster has GPUs, else the CPU"
    )
    max_retries: int = Field(
        3, ge=0, description="restarts of a dead actor, and retries of a batch or decode task"
    )
    stall_timeout_s: float = Field(
        600.0,
        gt=0,
        description="stop with an error when no batch finishes for this long (a cluster "
        "without room for the actors or decode tasks); completed shards are kept",
    )
    start_timeout_s: float = Field(
        600.0,
        gt=0,
        description="stop with an error when the tokenizer actors and decode workers have not "
        "started within this long (loading the tokenizer is slower than a batch on a busy node)",
    )
    progress: bool = True
