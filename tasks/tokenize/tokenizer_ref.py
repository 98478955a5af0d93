"""Pin a tokenizer reference to one exact version and describe it for lineage and output paths."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

from pydantic import BaseModel

from models.tokenizer import TokenizerConfig, VideoTokenizer, load_tokenizer_from_dir
from tasks.config import config_hash
from tasks.registry import download_model_dir, pin_version

MODEL_FILES = ("config.json", "model.safetensors")


class TokenizerRecord(BaseModel):
    """The exact tokenizer a token dataset was made with."""

    reference: str  # as the user gave it, e.g. models:/arvid-tokenizer@champion
    pinned: str  # the same tokenizer by a reference that cannot move (alias resolved)
    name: str | None
    version: str | None
    run_id: str | None
    label: str  # the <tokenizer-version> folder of the token dataset
    config_hash: str
    weights_sha256: str
    scales: list[int] | None
    vocab_size: int
    temporal_factor: int
    spatial_factor: int

    @property
    def digest(self) -> str:
        """Identity of the weights and architecture: equal digests encode identically."""
        return hashlib.sha256(f"{self.config_hash}:{self.weights_sha256}".encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def resolve_tokenizer(reference: str, destination: Path) -> tuple[TokenizerRecord, Path]:
    """Download the tokenizer named by `reference` into `destination`; returns its record and folder.

    Raises FileNotFoundError naming the reference when it does not exist.
    """
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    pinned = reference
    label = ""
    if reference.startswith("models:/"):
        name, version, run_id = pin_version(reference)
        # Download by number, not alias: an alias that moves mid-run must not change the tokens.
        pinned = f"models:/{name}/{version}"
        label = f"{_slug(name)}-v{version}"
    elif reference.startswith("runs:/"):
        run_id, _, artifact = reference[len("runs:/") :].partition("/")
        label = f"run-{_slug(run_id)}" + (f"-{_slug(artifact)}" if artifact else "")
    model_dir = download_model_dir(pinned, destination)
    missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{reference}: the model folder holds no {', '.join(missing)}")
    config = TokenizerConfig.model_validate_json((model_dir / "config.json").read_text())
    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    if not reference.startswith(("models:/", "runs:/")):
        label = f"local-{weights[:12]}"
    record = TokenizerRecord(
        reference=reference,
        pinned=pinned,
        name=name,
        version=version,
        run_id=run_id,
        label=label,
        config_hash=config_hash(config),
        weights_sha256=weights,
        scales=config.scales,
        vocab_size=math.prod(config.levels),
        temporal_factor=config.temporal_factor,
        spatial_factor=config.spatial_factor,
    )
    return record, model_dir


def read_model_files(model_dir: Path) -> dict[str, bytes]:
    """The bytes of a model folder's files, to ship to actors that may not see this filesystem."""
    return {name: (model_dir / name).read_bytes() for name in MODEL_FILES}


def load_from_files(files: dict[str, bytes], directory: Path, device: str) -> VideoTokenizer:
    """Write shipped model files into `directory` and load the tokenizer from there (no unpickling)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return load_tokenizer_from_dir(directory, device=device).eval()
