"""Checkpoints of a pretraining stage, in the same protocol as tokenizer checkpoints
(tasks/train/checkpoints.py: files, then checkpoint.json with their sizes and hashes, then
latest.json as the commit point; the last K kept):

    <run_dir>/step-00000100/model.safetensors   weights (Generator, or VideoAR with its wrapper)
                           /config.json         the model folder's config (loads as a model)
                           /optimizer.pt        AdamW state (tensors only, loaded weights_only)
                           /checkpoint.json     step, metadata, size + sha256 of each file
"""

from __future__ import annotations

import io
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from models.generator.persist import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    generator_config_json,
    generator_state,
)
from tasks import storage
from tasks.train.checkpoints import (
    checkpoint_name,
    latest_checkpoint,
    publish_checkpoint,
    read_checkpoint,
)

OPTIMIZER_STATE = "optimizer.pt"


class StageCheckpoints:
    """Save, find and restore the checkpoints of one stage's run folder."""

    def __init__(self, run_dir: str, keep: int = 2) -> None:
        self.run_dir = run_dir
        self.keep = keep

    def uri(self, step: int) -> str:
        """The folder of the checkpoint after `step` steps."""
        return storage.join(self.run_dir, checkpoint_name(step))

    def latest(self) -> str | None:
        """The checkpoint latest.json points at, or None."""
        return latest_checkpoint(self.run_dir)

    def save(
        self,
        step: int,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        metadata: dict[str, Any] | None = None,
        whole: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    ) -> str:
        """Publish the checkpoint of `step`, then point latest.json at it; prune old ones.

        `whole`: (weights, optimizer state) gathered from a sharded model, saved instead of the
        module's and optimizer's own (which hold one shard).
        """
        weights, optimizer_state = whole or (generator_state(module), optimizer.state_dict())
        buffer = io.BytesIO()
        torch.save(optimizer_state, buffer)
        files = {
            WEIGHTS_FILE: save_safetensors(
                {name: t.detach().contiguous().cpu() for name, t in weights.items()}
            ),
            CONFIG_FILE: generator_config_json(module, {"step": step, **(metadata or {})}).encode(),
            OPTIMIZER_STATE: buffer.getvalue(),
        }
        return publish_checkpoint(self.run_dir, step, files, metadata, self.keep)

    @staticmethod
    def _files(uri: str) -> tuple[int, dict[str, bytes]]:
        manifest, files = read_checkpoint(uri, (WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_STATE))
        return int(manifest["step"]), files

    @staticmethod
    def load_weights(uri: str) -> dict[str, torch.Tensor]:
        """The verified weights of a checkpoint (e.g. the previous stage's last one)."""
        _, files = StageCheckpoints._files(uri)
        return load_safetensors(files[WEIGHTS_FILE])

    def read(self, uri: str) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
        """(step, weights, optimizer state) of a checkpoint, verified, as whole tensors."""
        step, files = self._files(uri)
        optimizer_state = torch.load(
            io.BytesIO(files[OPTIMIZER_STATE]), map_location="cpu", weights_only=True
        )
        return step, load_safetensors(files[WEIGHTS_FILE]), optimizer_state

    def restore(self, uri: str, module: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load weights and optimizer state of a checkpoint into `module`/`optimizer`; its step."""
        step, weights, optimizer_state = self.read(uri)
        module.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)
        return step
