"""Which autocast a training loop runs under, and a tokenizer step trained in bf16 on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tasks.data.datasets import DatasetRef
from tasks.storage import StorageSettings
from tasks.train.precision import bf16_autocast, bf16_enabled, cpu_has_native_bf16
from tasks.train.tokenizer_loop import TrainingSpec, run_training
from tasks.train.worker import WorkerContext
from tests.tasks.train.conftest import small_window_training

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("device", "gpu_bf16", "cpu_bf16", "expected"),
    [
        (CPU, True, False, False),  # the GPU setting never reaches a CPU worker
        (CPU, False, True, True),
        (CUDA, True, False, True),  # nor the CPU setting a GPU worker
        (CUDA, False, True, False),
    ],
)
def test_each_device_reads_its_own_setting(device, gpu_bf16, cpu_bf16, expected) -> None:
    assert bf16_enabled(device, gpu_bf16, cpu_bf16) is expected


def test_auto_follows_the_cpus_bf16_instructions() -> None:
    assert bf16_enabled(CPU, False, "auto") is cpu_has_native_bf16()


@pytest.mark.parametrize(("cpu_bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_the_context_casts_convolutions_as_decided(cpu_bf16, dtype) -> None:
    conv = nn.Conv3d(3, 4, 3)
    with bf16_autocast(CPU, True, cpu_bf16):
        assert conv(torch.randn(1, 3, 3, 5, 5)).dtype == dtype


def _first_step_loss(dataset: DatasetRef, run_dir: Path, cpu_bf16: bool) -> float:
    spec = TrainingSpec(
        training=small_window_training(steps=1, log_every=1, cpu_bf16=cpu_bf16),
        storage=StorageSettings(),
        dataset=dataset,
        run_dir=str(run_dir),
    )
    result = run_training(spec, WorkerContext())
    assert result is not None
    return result.metrics["loss/reconstruction"]


def test_a_bf16_step_on_the_cpu_computes_the_float32_loss_to_bf16_precision(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    # The same seed, clip and weights: only the precision of the convolutions differs.
    full = _first_step_loss(tiny_dataset, tmp_path / "fp32", False)
    half = _first_step_loss(tiny_dataset, tmp_path / "bf16", True)
    assert half != full  # the step really ran in bf16
    assert half == pytest.approx(full, rel=2e-2)
