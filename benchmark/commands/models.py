"""``casdm train NAME`` and ``casdm sample NAME``: the train@ and sample@ stages of one model."""
from __future__ import annotations

from pathlib import Path

import typer

from benchmark.commands.common import (
    PARAMS,
    SEED,
    console,
    err,
    need_tracking,
    or_fail,
    path_option,
    read_params,
    with_seed,
)

NAME = typer.Argument(..., help="model name (a key of params.yaml models)")


def train_cmd(name: str = NAME, params: Path = PARAMS, data: Path = path_option("the prepared dataset"),
              checkpoints: Path = path_option("checkpoint folder (kept between runs: re-running resumes)"),
              out: Path = path_option("folder of the trained pipeline"),
              metrics: Path = path_option("training metrics JSON"),
              plot: Path = path_option("loss-curve CSV"), seed: int | None = SEED) -> None:
    """Train one model; re-running resumes from its last checkpoint."""
    from benchmark.engine.trainer import RunPaths, train
    from benchmark.launch import relaunch

    p = with_seed(read_params(params, name), seed)
    need_tracking(p)  # a tracking server that is down: fail now, before anything is written
    rc = relaunch(p.runtime.num_processes, ["train", name, "--params", params, "--data", data, "--checkpoints",
                                          checkpoints, "--out", out, "--metrics", metrics, "--plot", plot,
                                          "--seed", p.train.seed])
    if rc is not None:
        raise typer.Exit(rc)
    paths = RunPaths(data=data, checkpoints=checkpoints, model=out, metrics=metrics, plot=plot)
    m = or_fail(train, p, name, paths, console=err)  # a NonFiniteLoss is a RuntimeError: one of ERRORS
    if not m:  # a launched process other than rank 0: the main one reports
        return
    console.print(f"{name} (seed {p.train.seed}): {m['steps']} steps, loss {m['first_loss']:.4g} -> {m['final_loss']:.4g}, "
                  f"{m['s_per_step']:.3f} s/step, {m['num_parameters'] / 1e6:.2f} M parameters")


def sample_cmd(name: str = NAME, params: Path = PARAMS, data: Path = path_option("the prepared dataset"),
               model: Path = path_option("the trained pipeline"), out: Path = path_option("folder of the images"),
               metrics: Path = path_option("sampling metrics JSON"), seed: int | None = SEED) -> None:
    """Generate one image per test map (and per chosen training map) with a trained model."""
    from benchmark.engine.sample import sample
    from benchmark.launch import relaunch

    p = with_seed(read_params(params, name), seed)
    rc = relaunch(p.sample.num_processes, ["sample", name, "--params", params, "--data", data, "--model", model,
                                           "--out", out, "--metrics", metrics, "--seed", p.train.seed])
    if rc is not None:
        raise typer.Exit(rc)
    r = or_fail(sample, p, name, model, data, out, metrics, log=lambda line: console.print(line, highlight=False))
    if not r:
        return
    console.print(f"{name} (seed {p.train.seed}): {r['images']} images, {r['s_per_image']:.3f} s/image ({r['scheduler']}, "
                  f"{r['num_inference_steps']} steps)")
