"""Where the stages run and at what precision: one answer for the trainer, the sampler and the evaluators."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

NATIVE_BF16 = ("avx512_bf16", "amx_bf16")  # CPU flags with bf16 arithmetic in hardware
CPUINFO = Path("/proc/cpuinfo")


def device() -> str:
    """Where the stages run: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        line = next(ln for ln in CPUINFO.read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows: the report's environment block."""
    import platform

    try:
        return next((ln.split(":", 1)[1].strip() for ln in CPUINFO.read_text().splitlines()
                     if ln.startswith("model name")), platform.processor() or "-")
    except OSError:
        return platform.processor() or "-"


def mixed_precision(setting: str) -> str:
    """A ``mixed_precision`` setting (train or sample) with ``auto`` resolved: bf16 on a GPU that has it
    and on a CPU with bf16 in hardware, else no. (Without it bf16 autocast is emulated: the cpu preset's
    training step measured 28x slower than float32 on an AVX2-only CPU and 1.5-2.2x slower on an AVX-512
    CPU without avx512_bf16, docs/results.md.) An explicit bf16 on such a CPU runs as asked, with a warning."""
    if setting == "fp16" and not torch.cuda.is_available():
        # accelerate records fp16 on a CPU and then runs float32: a run would say what it did not do
        raise ValueError("mixed_precision fp16: needs a GPU (float16 autocast is not applied on a CPU); use bf16, "
                         "no or auto (train.mixed_precision / sample.mixed_precision)")
    if setting == "bf16" and not torch.cuda.is_available() and not cpu_flags() & set(NATIVE_BF16):
        warnings.warn("mixed_precision bf16: this CPU has no bf16 in hardware (avx512_bf16 / amx_bf16), so autocast "
                      "is emulated and slower than float32; set no or auto (train.mixed_precision / "
                      "sample.mixed_precision)", RuntimeWarning, stacklevel=2)
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_flags() & set(NATIVE_BF16) else "no"
