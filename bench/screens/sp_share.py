"""How much does CA-SP weigh? Train the method with params.yaml's settings (stage 2 from
``sp_start_step``), then measure on fresh batches the share of the CA-SP term in the loss and in the
gradient: ||grad(lambda * CA-SP)|| / ||grad(CA-MSE)|| and the cosine between the two gradients.

    python -m bench.screens.sp_share [--steps N] [--sp-start K] [--lambda-sp L] [--batches 8]

CA-SP is linear in lambda, so one run tells which lambda gives which share; results go to
``bench/results/sp_share_*.json``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmark.config import load_params
from benchmark.engine.data import PreparedDataset, augment
from benchmark.engine.trainer import RunPaths, train
from benchmark.io import write_json
from benchmark.kinds.registry import make_kind


def grad_of(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--model", default="casdm")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default train.steps)")
    ap.add_argument("--sp-start", type=int, default=None, help="stage 2 start (default the model's sp_start_step)")
    ap.add_argument("--lambda-sp", type=float, default=None, help="lambda (default the model's lambda_sp)")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("bench/results/sp_share_cpu.json"))
    args = ap.parse_args()
    base = load_params(args.params)
    training = dict(base.models[args.model].training)
    training.update({k: v for k, v in (("sp_start_step", args.sp_start), ("lambda_sp", args.lambda_sp)) if v is not None})
    p = base.model_copy(update={
        "models": {**base.models, args.model: base.models[args.model].model_copy(update={"training": training})},
        "train": base.train.model_copy(update={"steps": args.steps or base.train.steps})})
    data = PreparedDataset(args.data, "train")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        m = train(p, args.model, RunPaths(args.data, tmp / "ckpt", tmp / "model", tmp / "m.json", tmp / "p.csv"),
                  track=False)
        seconds = time.perf_counter() - t0
        curve = (tmp / "p.csv").read_text().splitlines()
        kind = make_kind(p, args.model, data.table)
        model = kind.load_model(tmp / "model", "_raw").train()
        kind.on_step(p.train.steps, model)  # stage 2: f* as the run took it
        latest = sorted((tmp / "ckpt").glob("step-*"), key=lambda q: int(q.name[5:]))[-1]
        kind.load_state(latest, model)
    header = curve[0].split(",")
    ratios = [float(r.split(",")[header.index("sp_ratio")]) for r in curve[1:]
              if "sp_ratio" in header and r.split(",")[header.index("sp_ratio")]]

    class Acc:
        def autocast(self):
            return torch.autocast("cpu", enabled=False)

    params = [q for q in model.parameters() if q.requires_grad]
    rows = []
    for b in range(args.batches):
        g = torch.Generator().manual_seed(10_000 + b)
        idx = torch.randint(0, len(data), (p.train.batch_size,), generator=g).tolist()
        images = torch.stack([data[i]["image"] for i in idx])
        labels = torch.stack([data[i]["labels"] for i in idx])
        images, labels = augment(images, labels, g)
        _, terms = kind.loss(model, images, labels, g, Acc())
        g_mse, g_sp = grad_of(terms["ca_mse"], params), grad_of(kind.options.lambda_sp * terms["ca_sp"], params)
        rows.append({"loss_share": (kind.options.lambda_sp * terms["ca_sp"] / terms["ca_mse"]).item(),
                     "grad_norm_ratio": (g_sp.norm() / g_mse.norm()).item(),
                     "grad_cosine": torch.nn.functional.cosine_similarity(g_sp, g_mse, dim=0).item()})
    o = kind.options
    result = {"model": args.model, "steps": p.train.steps, "sp_start_step": o.sp_start_step, "lambda_sp": o.lambda_sp,
              "ca_variant": o.ca_variant, "train_s": seconds, "final_loss": m["final_loss"],
              "sp_ratio_during_training": {"first": ratios[:1], "mean": statistics.fmean(ratios) if ratios else None,
                                           "last": ratios[-1:]},
              "after_training": {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}, "batches": rows}
    print(f"lambda_SP {o.lambda_sp}, stage 2 from step {o.sp_start_step} of {p.train.steps} ({o.ca_variant}): "
          f"loss share {result['after_training']['loss_share']:.3f}, gradient norm ratio "
          f"{result['after_training']['grad_norm_ratio']:.3f}, cosine {result['after_training']['grad_cosine']:.3f}; "
          f"sp_ratio during training {result['sp_ratio_during_training']['mean']}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
