"""How far a measured step is from what this machine can do: FLOPs counted, peak FLOP/s timed.

The peak is measured, not read from a datasheet: a large GEMM and a large 3x3 convolution in the
dtype being benchmarked, on the same device and in the same process as the step (so thread count,
turbo state and memory bandwidth are the step's own). A step's roofline fraction is its achieved
FLOP/s (``torch.utils.flop_counter`` over forward and backward, divided by the median step time)
over the better of the two peaks: the fraction of the limit, whatever made the step slower.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward; a multiply-add is 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_flops(device: str, dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a large GEMM and of a large 3x3 convolution (the U-Net's main op) in ``dtype``."""
    n = 4096 if device.startswith("cuda") else 1536
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    gemm = 2 * n**3 / _timed(lambda: a @ b, device, repeats)
    batch, ch, size = (32, 256, 64) if device.startswith("cuda") else (8, 128, 32)
    x = torch.randn(batch, ch, size, size, device=device, dtype=dtype)
    w = torch.randn(ch, ch, 3, 3, device=device, dtype=dtype)
    conv_flops = count_flops(lambda: torch.nn.functional.conv2d(x, w, padding=1))
    conv = conv_flops / _timed(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, repeats)
    return {"gemm_flops_per_s": gemm, "conv3x3_flops_per_s": conv}


def roofline(step_flops: int, step_s: float, peak: dict[str, float]) -> dict[str, float]:
    """Achieved FLOP/s of a step and its fraction of the better measured peak."""
    achieved = step_flops / step_s
    return {"flops_per_step": step_flops, "achieved_flops_per_s": achieved,
            "fraction_of_peak": achieved / max(peak.values())}


def main() -> None:
    """``python -m bench.roofline [--device cpu] [--dtype float32]``: this machine's measured peaks."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = ap.parse_args()
    for name, value in peak_flops(a.device, getattr(torch, a.dtype)).items():
        print(f"{name}: {value / 1e9:.1f} GFLOP/s ({a.device}, {a.dtype})")


if __name__ == "__main__":
    main()
