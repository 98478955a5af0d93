"""Training checkpoints through the storage layer (local or s3://), atomic and resumable.

    <run_dir>/step-00000100/model.safetensors          tokenizer weights  } the same two files as a
                           /config.json                tokenizer config   } saved model directory
                           /ema.safetensors            the weights' moving average (when kept)
                           /discriminator.safetensors
                           /optimizer.pt               both optimizers' state dicts (tensors only)
                           /checkpoint.json            step, metadata, size + sha256 of each file
    <run_dir>/latest.json                              {"step": 100, "checkpoint": "step-00000100"}

Every object is published atomically by the storage layer; checkpoint.json goes after the files it
describes and latest.json goes last, so a run killed mid-save leaves the previous checkpoint as
the latest and a half-written folder that nothing points at. Loading verifies every file's hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from models.tokenizer import TokenizerConfig, VideoTokenizer
from tasks import storage

log = logging.getLogger("arvid.train")

LATEST_FILE = "latest.json"
MANIFEST_FILE = "checkpoint.json"
TOKENIZER_WEIGHTS = "model.safetensors"  # the names save_tokenizer uses, so a checkpoint folder
TOKENIZER_CONFIG = "config.json"  # also loads as a model directory
DISCRIMINATOR_WEIGHTS = "discriminator.safetensors"
AVERAGED_WEIGHTS = "ema.safetensors"
OPTIMIZER_STATE = "optimizer.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt; the message names it."""


@dataclass
class Checkpoint:
    """One loaded checkpoint: weights, optimizer state, step and metadata (all on the CPU)."""

    uri: str
    step: int
    tokenizer_config: TokenizerConfig
    tokenizer_state: dict[str, Tensor]
    discriminator_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    metadata: dict[str, Any]
    averaged_state: dict[str, Tensor] | None = None  # the EMA of the weights, when the run kept one

    def build_tokenizer(self, averaged: bool = True) -> VideoTokenizer:
        """A VideoTokenizer with this checkpoint's config and weights: the moving average where
        the run kept one (what a finished run publishes) unless `averaged` is False."""
        tokenizer = VideoTokenizer(self.tokenizer_config)
        use_average = averaged and self.averaged_state is not None
        tokenizer.load_state_dict(self.averaged_state if use_average else self.tokenizer_state)
        return tokenizer


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after `step` optimizer steps (sorts by step)."""
    return f"step-{step:08d}"


def state_digest(state: dict[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().contiguous().cpu() for name, t in module.state_dict().items()}


def save_checkpoint(
    run_dir: str,
    step: int,
    tokenizer: VideoTokenizer,
    discriminator: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    metadata: dict[str, Any] | None = None,
    keep: int | None = None,
    averaged_state: dict[str, Tensor] | None = None,
) -> str:
    """Write the checkpoint of `step` under `run_dir`, then point latest.json at it; returns its URI.

    With `keep`, older complete checkpoints beyond the newest `keep` are deleted afterwards;
    `averaged_state` (the weights' moving average) is saved beside the weights when given.
    """
    optimizer_buffer = io.BytesIO()
    torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, optimizer_buffer)
    files = {
        TOKENIZER_WEIGHTS: save_safetensors(_cpu_state(tokenizer)),
        TOKENIZER_CONFIG: (json.dumps(tokenizer.config.model_dump(), indent=2) + "\n").encode(),
        DISCRIMINATOR_WEIGHTS: save_safetensors(_cpu_state(discriminator)),
        OPTIMIZER_STATE: optimizer_buffer.getvalue(),
    }
    if averaged_state is not None:
        files[AVERAGED_WEIGHTS] = save_safetensors(averaged_state)
    return publish_checkpoint(run_dir, step, files, metadata, keep)


def publish_checkpoint(
    run_dir: str,
    step: int,
    files: dict[str, bytes],
    metadata: dict[str, Any] | None = None,
    keep: int | None = None,
) -> str:
    """Publish `files` as the checkpoint of `step` (files, then checkpoint.json with their sizes
    and hashes, then latest.json); returns its URI. With `keep`, older ones are pruned after."""
    uri = storage.join(run_dir, checkpoint_name(step))
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)
    manifest = {
        "step": step,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {
            name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files.items()
        },
        "metadata": metadata or {},
    }
    storage.write_text(storage.join(uri, MANIFEST_FILE), json.dumps(manifest, indent=2) + "\n")
    # The commit point: until this write, a reader still resumes from the previous checkpoint.
    storage.write_text(
        storage.join(run_dir, LATEST_FILE),
        json.dumps({"step": step, "checkpoint": checkpoint_name(step)}) + "\n",
    )
    log.info("checkpoint step %d -> %s", step, uri)
    if keep is not None:
        prune_checkpoints(run_dir, keep)
    return uri


def read_checkpoint(
    uri: str, required: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(checkpoint.json, files) of a complete checkpoint, every file verified against its hash.

    CheckpointError names the folder when it is incomplete, lacks one of `required`, or is corrupt.
    """
    manifest_uri = storage.join(uri, MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise CheckpointError(
            f"{uri}: no {MANIFEST_FILE}, so not a complete checkpoint — resume from latest.json"
        )
    manifest = json.loads(storage.read_text(manifest_uri))
    expected = manifest["files"]
    missing = sorted(set(required) - set(expected))
    if missing:
        raise CheckpointError(f"{manifest_uri}: lists no {', '.join(missing)}")
    return manifest, {name: _read_verified(uri, name, info) for name, info in expected.items()}


def latest_checkpoint(run_dir: str) -> str | None:
    """URI of the checkpoint latest.json points at, or None when the run has none yet."""
    pointer = storage.join(run_dir, LATEST_FILE)
    if not storage.exists(pointer):
        return None
    try:
        name = json.loads(storage.read_text(pointer))["checkpoint"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{pointer}: not a checkpoint pointer ({exc})") from exc
    return storage.join(run_dir, name)


def list_checkpoints(run_dir: str) -> list[str]:
    """URIs of the complete checkpoints (those with a checkpoint.json) of a run, oldest first."""
    found = set(storage.list_prefix(run_dir))
    steps = {
        uri[len(run_dir) :].strip("/").split("/")[0] for uri in found if uri.startswith(run_dir)
    }
    complete = [
        storage.join(run_dir, name)
        for name in steps
        if name.startswith("step-") and storage.join(run_dir, name, MANIFEST_FILE) in found
    ]
    return sorted(complete)


def prune_checkpoints(run_dir: str, keep: int) -> list[str]:
    """Delete complete checkpoints older than the newest `keep` (never the latest); returns them."""
    latest = latest_checkpoint(run_dir)
    doomed = [uri for uri in list_checkpoints(run_dir)[:-keep] if uri != latest]
    for uri in doomed:
        # The manifest goes first: a folder interrupted mid-delete is then simply incomplete.
        storage.delete(storage.join(uri, MANIFEST_FILE))
        for leftover in storage.list_prefix(uri):
            storage.delete(leftover)
    return doomed


def _read_verified(uri: str, name: str, expected: dict[str, Any]) -> bytes:
    data = storage.read_bytes(storage.join(uri, name))
    if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CheckpointError(
            f"{storage.join(uri, name)}: size or sha256 differs from {MANIFEST_FILE} — the "
            "checkpoint is corrupt; delete it (latest.json then needs an older step) or retrain"
        )
    return data


def describe_checkpoint(uri: str) -> tuple[int, TokenizerConfig]:
    """(step, tokenizer config) of a complete checkpoint, without reading its weights."""
    manifest_uri = storage.join(uri, MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise CheckpointError(
            f"{uri}: no {MANIFEST_FILE}, so not a complete checkpoint — resume from latest.json"
        )
    step = int(json.loads(storage.read_text(manifest_uri))["step"])
    config = TokenizerConfig.model_validate_json(
        storage.read_text(storage.join(uri, TOKENIZER_CONFIG))
    )
    return step, config


def load_checkpoint(uri: str) -> Checkpoint:
    """Read and verify one checkpoint folder (weights as tensors, optimizer state weights-only)."""
    manifest, data = read_checkpoint(
        uri, (TOKENIZER_WEIGHTS, TOKENIZER_CONFIG, DISCRIMINATOR_WEIGHTS, OPTIMIZER_STATE)
    )
    # weights_only: the optimizer file holds tensors and plain containers, never code.
    optimizer_state = torch.load(
        io.BytesIO(data[OPTIMIZER_STATE]), map_location="cpu", weights_only=True
    )
    return Checkpoint(
        uri=uri,
        step=int(manifest["step"]),
        tokenizer_config=TokenizerConfig.model_validate_json(data[TOKENIZER_CONFIG]),
        tokenizer_state=load_safetensors(data[TOKENIZER_WEIGHTS]),
        discriminator_state=load_safetensors(data[DISCRIMINATOR_WEIGHTS]),
        optimizer_state=optimizer_state,
        metadata=manifest.get("metadata", {}),
        averaged_state=load_safetensors(data[AVERAGED_WEIGHTS])
        if AVERAGED_WEIGHTS in data
        else None,
    )
