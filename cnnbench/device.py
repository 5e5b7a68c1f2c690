"""Device, threads and mixed precision: what `device=...` means on this machine."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from .config import DeviceName, Precision
from .errors import CnnbenchError


def cpu_count() -> int:
    """Cores this process may use (respects affinity / container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512_BF16 or AMX), not by emulation."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_device(dcfg) -> torch.device:
    """cpu, cuda or auto (cuda when available); sets CPU threads to the cores."""
    name = dcfg.name
    if name == DeviceName.cuda and not torch.cuda.is_available():
        raise CnnbenchError(
            "device=cuda was asked for but no CUDA GPU is available "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use device=cpu or device=auto"
        )
    if name == DeviceName.auto:
        name = DeviceName.cuda if torch.cuda.is_available() else DeviceName.cpu
    torch.set_num_threads(dcfg.threads or cpu_count())
    return torch.device(name.value)


def resolve_precision(dcfg, device: torch.device) -> Precision:
    """auto: bf16 on GPUs that support it and on CPUs with native bf16; fp32 elsewhere."""
    precision = dcfg.precision
    if precision == Precision.auto:
        if device.type == "cuda":
            return Precision.bf16 if torch.cuda.is_bf16_supported() else Precision.fp32
        return Precision.fp32
    if precision == Precision.fp16 and device.type != "cuda":
        raise CnnbenchError("device.precision=fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    if precision == Precision.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        raise CnnbenchError(
            "device.precision=bf16 on this CPU would be emulated (no AVX512_BF16/AMX) and run "
            "~40x slower than fp32; use device.precision=fp32 or auto"
        )
    return precision


def autocast_for(precision: Precision, device: torch.device) -> AbstractContextManager | None:
    if precision == Precision.fp32:
        return None
    dtype = torch.bfloat16 if precision == Precision.bf16 else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler_for(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler(device.type) if precision == Precision.fp16 else None
