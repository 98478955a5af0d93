"""FSDP2 for pretraining: shard each transformer block and the whole model over the workers, and
move whole (unsharded) state in and out so checkpoints keep one format for DDP and FSDP runs.

DDP keeps a full copy of weights, gradients and AdamW state on every worker; FSDP2
(`torch.distributed.fsdp.fully_shard`) keeps 1/world of each and gathers a block's weights only
while that block runs. Checkpoints stay whole tensors (safetensors weights, a plain optimizer
state dict), so a stage trained with FSDP resumes with DDP and the other way round.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.generator.transformer import Generator


def shard_model(module: nn.Module, generator: Generator) -> None:
    """Shard every block of `generator` and then the rest of `module` (in place)."""
    from torch.distributed.fsdp import fully_shard

    for block in generator.blocks:
        fully_shard(block)
    fully_shard(module)


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(
    module: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Whole weights and optimizer state of a sharded model, on the CPU (every rank must call)."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = _full_options()
    weights = get_model_state_dict(module, options=options)
    return weights, get_optimizer_state_dict(module, optimizer, options=options)


def load_full_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a whole optimizer state (as checkpoints hold it) into a sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        module, optimizer, optim_state_dict=state,
        options=StateDictOptions(full_state_dict=True),
    )  # fmt: skip


def scalar(value: torch.Tensor) -> float:
    """A float from a tensor that may be a DTensor (a sharded model's gradient norm)."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)
