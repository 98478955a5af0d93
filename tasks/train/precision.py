"""The autocast a training loop runs under: bf16 on GPUs, and on CPUs that compute bf16 natively.

On a CPU with AVX512-BF16 or AMX, oneDNN runs bf16 convolutions faster than float32 ones (the demo
tokenizer's step: x0.77 the time on 32 px crops, x0.66 on whole 64 px windows, one thread); on a
CPU without them bf16 is emulated and slower, so "auto" turns it on only where it pays.
"""

from __future__ import annotations

import torch

from tasks.train.tokenizer_config import CpuBf16


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 instructions (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def bf16_enabled(device: torch.device, gpu_bf16: bool, cpu_bf16: CpuBf16) -> bool:
    """Whether a loop on `device` autocasts to bf16 under these settings."""
    if device.type == "cuda":
        return gpu_bf16
    if device.type == "cpu":
        return cpu_has_native_bf16() if cpu_bf16 == "auto" else bool(cpu_bf16)
    return False


def bf16_autocast(device: torch.device, gpu_bf16: bool, cpu_bf16: CpuBf16) -> torch.autocast:
    """A bf16 autocast context for `device`, enabled as `bf16_enabled` decides."""
    return torch.autocast(
        device_type=device.type,
        dtype=torch.bfloat16,
        enabled=bf16_enabled(device, gpu_bf16, cpu_bf16),
    )
