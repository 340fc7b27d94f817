"""Speed of the CASDM core at a preset: training step time (MSE, CA-MSE, CA-MSE + CA-SP) and
sampling time per image per sampler, with and without SPADE reuse, and each training step's FLOPs
and achieved FLOP/s as a fraction of this machine's measured peak (``bench.roofline``).

Usage (repo root, venv active): ``python -m bench.speed [--preset cpu] [--batch 8]``.
Prints a table and writes ``bench/results/speed_<preset>.json``. Warm-up steps are excluded;
the median of the timed steps is reported (nanoGPT's bench.py pattern).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from bench.roofline import count_flops, peak_flops, roofline
from benchmark.config import load_params
from benchmark.io import write_json
from casdm.losses import class_pixel_weights
from casdm.pipeline import CASDMPipeline, to_onehot
from casdm.schedulers import make_scheduler

REPO = Path(__file__).resolve().parents[1]


def median_time(fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _batch(batch: int, res: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and blocky 13-class maps (8x8-pixel cells), fixed by seed."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 13, (batch, res // 8, res // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    return (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(device), labels.to(device)


def _train_step(kind, model, opt, images, labels, accelerator):
    """One step through the kind's own loss (what the trainer runs), every training stage switched on."""
    kind.on_step(10**9, model)
    loss, _ = kind.loss(model, images, labels, torch.Generator().manual_seed(1), accelerator)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if images.is_cuda:
        torch.cuda.synchronize()
    return loss.item()


def bench(preset: str, batch: int, steps: int, sample_steps: int, resolution: int | None, device: str,
          dtype: torch.dtype) -> dict:
    from accelerate import Accelerator

    from benchmark.data.classes import CHOLECSEG8K
    from benchmark.kinds.registry import make_kind

    base = load_params(REPO / "params.yaml")
    res = resolution or base.data.resolution
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if dtype == torch.bfloat16 else "no")

    def kind_for(loss: str):
        entry = base.models["casdm"]
        entry = entry.model_copy(update={"training": {**entry.training, "loss": loss}})
        params = base.model_copy(update={"train": base.train.model_copy(update={"preset": preset}),
                                         "data": base.data.model_copy(update={"resolution": res}),
                                         "models": {"casdm": entry}})
        return make_kind(params, "casdm", CHOLECSEG8K)

    model = kind_for("mse").build().to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0, labels = _batch(batch, res, device)
    oh = to_onehot(labels, 13)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    def weights_only():
        class_pixel_weights(oh)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    result = {"preset": preset, "resolution": res, "batch": batch, "device": device, "dtype": str(dtype),
              "num_parameters": n_params, "train_s_per_step": {}, "sample_s_per_image": {},
              "peak": peak_flops(device, dtype), "roofline": {}}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for loss in ("mse", "ca_mse", "ca_mse+ca_sp"):
        kind = kind_for(loss)

        def step():  # the kind's loss runs under the accelerator's autocast: FLOPs counted in the timed dtype
            return _train_step(kind, model, opt, x0, labels, accelerator)

        result["train_s_per_step"][loss] = median_time(step, 2, steps)
        result["roofline"][loss] = roofline(count_flops(step), result["train_s_per_step"][loss], result["peak"])
    result["ca_sp_over_ca_mse"] = result["train_s_per_step"]["ca_mse+ca_sp"] / result["train_s_per_step"]["ca_mse"]
    result["train_s_per_step"]["ca_weights_only"] = median_time(weights_only, 2, steps)
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    model.eval()
    n_img = min(batch, 8)
    for name, nsteps in (("ddim", sample_steps), ("dpmsolver++", max(sample_steps // 2, 1)), ("ddpm", sample_steps)):
        pipe = CASDMPipeline(model, make_scheduler(name, base.diffusion))
        pipe.set_progress_bar_config(disable=True)
        for reuse in (True, False):
            with autocast:
                sec = median_time(lambda: pipe(labels[:n_img], nsteps, spade_reuse=reuse, output_type="pt"), 1, 2)
            result["sample_s_per_image"][f"{name}-{nsteps}{'' if reuse else ' (no SPADE reuse)'}"] = sec / n_img
    return result


def bench_models(batch: int, steps: int, dtype: torch.dtype = torch.float32) -> dict:
    """One row per model of params.yaml: its training step (through its registered kind, so CASDM's
    CA-SP term is on) and its sampling time per image with its configured sampler; ``bfloat16`` runs
    both under CPU autocast, as ``train.mixed_precision: bf16`` would, and records whether the loss
    stayed finite."""
    from accelerate import Accelerator

    from benchmark.data.classes import CHOLECSEG8K
    from benchmark.kinds.registry import make_kind

    params = load_params(REPO / "params.yaml")
    bf16 = dtype == torch.bfloat16
    acc, rows = Accelerator(cpu=True, mixed_precision="bf16" if bf16 else "no"), {}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    images, labels = _batch(batch, params.data.resolution, "cpu")
    for name, entry in params.models.items():
        kind = make_kind(params, name, CHOLECSEG8K)
        model = kind.build()
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-4)
        losses = []
        train_s = median_time(lambda: losses.append(_train_step(kind, model, opt, images, labels, acc)), 2, steps)
        model.eval()
        s = entry.sampling
        n_img = min(batch, 8)
        pipe = kind.pipeline(model)
        with autocast:
            sample_s = median_time(lambda: pipe(labels[:n_img], s.num_inference_steps, s.guidance_scale,
                                                 output_type="pt"), 1, 2) / n_img
        rows[name] = {"kind": entry.kind, "loss": entry.training["loss"],
                      "num_parameters": sum(p.numel() for p in model.parameters()),
                      "train_s_per_step": train_s, "sampler": f"{s.scheduler}-{s.num_inference_steps}"
                      + (f" x{s.guidance_scale} guidance" if s.guidance_scale != 1 else ""),
                      "sample_s_per_image": sample_s, "dtype": str(dtype).removeprefix("torch."),
                      "losses_finite": bool(all(map(math.isfinite, losses)))}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per loss")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--models", action="store_true", help="one row per params.yaml model instead")
    a = ap.parse_args()
    if a.models:
        return _print_models(bench_models(a.batch, a.steps, getattr(torch, a.dtype)), a.out)
    r = bench(a.preset, a.batch, a.steps, a.sample_steps, a.resolution, a.device, getattr(torch, a.dtype))
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{a.preset} preset, {r['resolution']} px, batch {a.batch}, {r['num_parameters'] / 1e6:.2f} M "
                    f"parameters, {a.device} {a.dtype}")
    t.add_column("what")
    t.add_column("seconds", justify="right")
    for k, v in r["train_s_per_step"].items():
        t.add_row(f"train step: {k}", f"{v:.4f}")
    for k, v in r["roofline"].items():
        t.add_row(f"  {k}: GFLOP/step, achieved GFLOP/s, fraction of peak",
                  f"{v['flops_per_step'] / 1e9:.1f}, {v['achieved_flops_per_s'] / 1e9:.1f}, {v['fraction_of_peak']:.3f}")
    for k, v in r["peak"].items():
        t.add_row(f"peak {k.replace('_flops_per_s', '')} GFLOP/s ({a.dtype})", f"{v / 1e9:.1f}")
    t.add_row("CA-SP step / CA-MSE step", f"{r['ca_sp_over_ca_mse']:.3f}")
    for k, v in r["sample_s_per_image"].items():
        t.add_row(f"sample per image: {k}", f"{v:.4f}")
    if "peak_memory_gib" in r:
        t.add_row("peak training memory (GiB)", f"{r['peak_memory_gib']:.2f}")
    Console(width=120).print(t)
    write_json(a.out or REPO / "bench" / "results" / f"speed_{a.preset}.json", r)


def _print_models(rows: dict, out: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="per model, params.yaml (batch-8 train step; sampling with each model's own sampler)")
    for col in ("model", "kind", "loss", "parameters (M)", "train s/step", "sampler", "sample s/image"):
        t.add_column(col, justify="right" if col[0] in "pts" and col != "sampler" else "left")
    for name, r in rows.items():
        t.add_row(name, r["kind"], r["loss"], f"{r['num_parameters'] / 1e6:.2f}", f"{r['train_s_per_step']:.3f}",
                  r["sampler"], f"{r['sample_s_per_image']:.3f}")
    Console(width=120).print(t)
    out = out or REPO / "bench" / "results" / "speed_models.json"
    write_json(out, rows)


if __name__ == "__main__":
    main()
