"""Device, threads and mixed precision: what `device=...` means on this machine.

`device.precision=auto` picks bf16 autocast where it pays:
- CUDA: on GPUs with native bf16 (compute capability >= 8.0), never the emulated path.
- CPU: only when the CPU computes bf16 in hardware (AVX512_BF16 or AMX) *and* a short
  measurement of forward+backward steps on the run's model and batch shows bf16 faster than
  fp32. The measurement is skipped for runs too small to repay it (they use fp32) and its
  result is cached per (model, input size, batch, memory format, threads, CPU, torch) in
  ~/.cache/cnnbench/precision.json ($CNNBENCH_CACHE to move it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import DeviceName, Precision
from .data.cache import cache_root
from .distributed import Distributed
from .errors import CnnbenchError
from .perf import StepTimer, train_flops_per_image

log = logging.getLogger("cnnbench")

# Below this many FLOPs the whole run is seconds of CPU time: a measurement cannot pay off.
MIN_TRAIN_FLOPS = 2e12
# The measurement costs ~10 steps; the run must be long enough for that to be noise.
MIN_TRAIN_STEPS = 300
# The probe may spend at most this fraction of the run's estimated fp32 time.
PROBE_BUDGET = 0.02
# bf16 must be at least this much faster than fp32 to be chosen (noise and precision margin).
BF16_MIN_SPEEDUP = 1.10
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_count() -> int:
    """Cores this process may use (respects affinity / container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is absent)."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model_name() -> str:
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512_BF16 or AMX), not by emulation."""
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def cuda_has_native_bf16() -> bool:
    """bf16 in hardware (Ampere or newer); torch's default check also accepts emulation."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_device(dcfg, ddp: Distributed | None = None, jobs: int = 1) -> torch.device:
    """cpu, cuda or auto (cuda when available); sets CPU threads to the cores, and
    cudnn.benchmark for CUDA.

    Under torchrun (`ddp`) each process takes its LOCAL_RANK's GPU and its share of the
    cores; so does each of `jobs` sweep jobs running at once on this machine
    (hydra/launcher=joblib).
    """
    name = dcfg.name
    if name == DeviceName.cuda and not torch.cuda.is_available():
        raise CnnbenchError(
            "device=cuda was asked for but no CUDA GPU is available "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use device=cpu or device=auto"
        )
    if name == DeviceName.auto:
        name = DeviceName.cuda if torch.cuda.is_available() else DeviceName.cpu
    ddp = ddp or Distributed()
    # torchrun's processes on one machine share its cores.
    sharing = ddp.local_world_size * max(1, jobs)
    torch.set_num_threads(dcfg.threads or max(1, cpu_count() // sharing))
    if name == DeviceName.cuda:
        # Input sizes are fixed for a run: let cuDNN time its kernels once and keep the fastest
        # (CUDA runs are not bitwise reproducible anyway; CPU runs are unaffected).
        torch.backends.cudnn.benchmark = True
    if name == DeviceName.cuda and ddp.enabled:
        return torch.device("cuda", ddp.local_rank % torch.cuda.device_count())
    return torch.device(name.value)


@dataclass(frozen=True)
class Workload:
    """What the run will train: used to decide whether measuring bf16 can pay off."""

    model_name: str
    input_size: tuple[int, int, int]  # C, H, W as the model sees it
    batch_size: int
    train_images: int  # images over the whole run (epochs x training split)


@dataclass
class PrecisionProbe:
    """The measured seconds per forward+backward step of each precision."""

    fp32: float
    bf16: float

    @property
    def speedup(self) -> float:
        return self.fp32 / self.bf16


def resolve_precision(
    dcfg,
    device: torch.device,
    model: nn.Module | None = None,
    workload: Workload | None = None,
) -> Precision:
    """The precision to train in; `auto` on CPU may measure `model` on `workload`'s batch."""
    precision = dcfg.precision
    if precision == Precision.auto:
        if device.type == "cuda":
            native = cuda_has_native_bf16()
            log.info(
                f"precision auto: {'bf16' if native else 'fp32'} "
                f"({'native' if native else 'no native'} bf16 on {torch.cuda.get_device_name(device)})"
            )
            return Precision.bf16 if native else Precision.fp32
        return choose_cpu_precision(model, workload, channels_last=dcfg.channels_last)
    if precision == Precision.fp16 and device.type != "cuda":
        raise CnnbenchError("device.precision=fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    if precision == Precision.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        raise CnnbenchError(
            "device.precision=bf16 on this CPU would be emulated (no AVX512_BF16/AMX) and run "
            "~40x slower than fp32; use device.precision=fp32 or auto"
        )
    if precision == Precision.bf16 and device.type == "cuda" and not cuda_has_native_bf16():
        raise CnnbenchError(
            f"device.precision=bf16 on {torch.cuda.get_device_name(device)} would be emulated "
            "(bf16 needs compute capability >= 8.0); use device.precision=fp16, fp32 or auto"
        )
    return precision


def choose_cpu_precision(
    model: nn.Module | None, workload: Workload | None, *, channels_last: bool = False
) -> Precision:
    """fp32 unless the CPU has native bf16 and bf16 measures >= BF16_MIN_SPEEDUP faster."""
    if not cpu_has_native_bf16():
        log.info("precision auto: fp32 (this CPU has no native bf16: no AVX512_BF16 or AMX)")
        return Precision.fp32
    if model is None or workload is None:
        log.info("precision auto: fp32 (no model to measure bf16 on)")
        return Precision.fp32
    steps = math.ceil(workload.train_images / workload.batch_size)
    too_small = "precision auto: fp32 (run too small to repay a bf16 measurement"
    if steps < MIN_TRAIN_STEPS:
        log.info(f"{too_small}: {steps} steps < {MIN_TRAIN_STEPS})")
        return Precision.fp32
    flops = train_flops_per_image(model, workload.input_size) * workload.train_images
    if flops < MIN_TRAIN_FLOPS:
        log.info(f"{too_small}: {flops / 1e12:.2f} TFLOP < {MIN_TRAIN_FLOPS / 1e12:g})")
        return Precision.fp32
    key = _cache_key(model, workload, channels_last)
    cached = _read_cache().get(key)
    if cached is not None:
        probe, source = PrecisionProbe(cached["fp32"], cached["bf16"]), "cached measurement"
    else:
        probe = measure_precisions(model, workload, channels_last=channels_last, steps=steps)
        _write_cache(key, probe)
        source = "measured"
    choice = Precision.bf16 if probe.speedup >= BF16_MIN_SPEEDUP else Precision.fp32
    log.info(
        f"precision auto: {choice.value} ({source} on batch {workload.batch_size}: fp32 "
        f"{probe.fp32 * 1e3:.1f} ms/step, bf16 {probe.bf16 * 1e3:.1f} ms/step, bf16 "
        f"{probe.speedup:.2f}x; native bf16 CPU; bf16 needs >= {BF16_MIN_SPEEDUP:.2f}x)"
    )
    return choice


def measure_precisions(
    model: nn.Module, workload: Workload, *, channels_last: bool = False, steps: int = 10_000
) -> PrecisionProbe:
    """Seconds per fwd+bwd step in fp32 and bf16 on the run's batch, interleaved.

    One step of each first (it also warms up oneDNN); then up to 3 more rounds, as many as fit
    in PROBE_BUDGET of the run's estimated fp32 time (`steps` steps), whose medians are
    returned. When no round fits (slow steps, short run) the first steps are the answer: at
    that size their one-off setup cost is small next to the step itself.
    """
    timer = StepTimer(model, workload.input_size, workload.batch_size, channels_last=channels_last)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    start = time.perf_counter()
    first = PrecisionProbe(timer.step(), timer.step(bf16))
    rounds = min(3, int(PROBE_BUDGET * steps * first.fp32 / (first.fp32 + first.bf16)) - 1)
    if rounds < 1:
        return first
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        times["fp32"].append(timer.step())
        times["bf16"].append(timer.step(bf16))
    log.debug(f"precision probe took {time.perf_counter() - start:.1f} s ({rounds} rounds)")
    return PrecisionProbe(statistics.median(times["fp32"]), statistics.median(times["bf16"]))


def _cache_key(model: nn.Module, workload: Workload, channels_last: bool) -> str:
    params = sum(p.numel() for p in model.parameters())
    size = "x".join(map(str, workload.input_size))
    fmt = "channels_last" if channels_last else "nchw"
    return (
        f"{workload.model_name}|{params}|{size}|b{workload.batch_size}|{fmt}|"
        f"{torch.get_num_threads()}t|{cpu_model_name()}|torch {torch.__version__}"
    )


def _cache_path() -> Path:
    return cache_root(None) / "precision.json"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, probe: PrecisionProbe) -> None:
    entries = _read_cache()
    entries[key] = {"fp32": probe.fp32, "bf16": probe.bf16, "time": time.time()}
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as err:  # a read-only home must not stop training
        log.warning(f"could not cache the precision measurement in {path}: {err}")


def autocast_for(precision: Precision, device: torch.device) -> AbstractContextManager | None:
    if precision == Precision.fp32:
        return None
    dtype = torch.bfloat16 if precision == Precision.bf16 else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler_for(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler(device.type) if precision == Precision.fp16 else None
