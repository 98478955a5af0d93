"""Pin a tokenizer reference to one exact version and describe it for lineage and output paths."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

from pydantic import BaseModel

from models.tokenizer import TokenizerConfig, VideoTokenizer, load_tokenizer_from_dir
from tasks.config import config_hash
from tasks.registry import CONFIG_FILE, MODEL_FILES, WEIGHTS_FILE, ResolvedModel, resolve_model


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


def _label(model: ResolvedModel, weights_sha256: str) -> str:
    """The <tokenizer-version> folder name: registry version, run, or the weights' hash."""
    if model.source == "registry":
        return f"{_slug(model.name or '')}-v{model.version}"
    if model.source == "run":
        artifact = model.pinned[len("runs:/") :].partition("/")[2]
        return f"run-{_slug(model.run_id or '')}" + (f"-{_slug(artifact)}" if artifact else "")
    return f"local-{weights_sha256[:12]}"


def read_tokenizer_config(model_dir: Path) -> TokenizerConfig:
    """The architecture of the tokenizer saved in `model_dir` (its config.json)."""
    return TokenizerConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())


def resolve_tokenizer(reference: str, destination: Path) -> tuple[TokenizerRecord, Path]:
    """Download the tokenizer named by `reference` into `destination`; returns its record and folder.

    Takes every form `tasks.registry.resolve_model` does (models:/ alias, version or latest,
    runs:/, a local folder, an s3:// folder). Raises FileNotFoundError naming the reference when
    it does not exist, ModelKindError when it names another kind of arvid model.
    """
    model = resolve_model(reference, destination, kind="tokenizer")
    config = read_tokenizer_config(model.directory)
    weights = hashlib.sha256((model.directory / WEIGHTS_FILE).read_bytes()).hexdigest()
    record = TokenizerRecord(
        reference=reference,
        pinned=model.pinned,
        name=model.name,
        version=model.version,
        run_id=model.run_id,
        label=_label(model, weights),
        config_hash=config_hash(config),
        weights_sha256=weights,
        scales=config.scales,
        vocab_size=math.prod(config.levels),
        temporal_factor=config.temporal_factor,
        spatial_factor=config.spatial_factor,
    )
    return record, model.directory


def read_model_files(model_dir: Path) -> dict[str, bytes]:
    """The bytes of a model folder's files, to ship to actors that may not see this filesystem."""
    return {name: (model_dir / name).read_bytes() for name in MODEL_FILES}


def load_from_files(files: dict[str, bytes], directory: Path, device: str) -> VideoTokenizer:
    """Write shipped model files into `directory` and load the tokenizer from there (no unpickling)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return load_tokenizer_from_dir(directory, device=device).eval()
