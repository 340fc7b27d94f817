"""The trainer shared by every model: accelerate, AdamW + cosine warm-up, clipping, EMA, the paper's
augmentations, null-map dropout, atomic resumable checkpoints (``checkpoints.py``), MLflow tracking,
a rich progress bar.

Re-running the same command resumes from the last checkpoint whose parameters match: the checkpoint
folder is no DVC output, so DVC never deletes it.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmark.config import Params
from benchmark.devices import mixed_precision
from benchmark.engine import checkpoints
from benchmark.engine.data import PreparedDataset, StepBatchSampler, augment
from benchmark.io import atomic_dir, write_csv, write_json
from benchmark.kinds.registry import make_kind, train_config, training_config
from benchmark.seeds import RANK, derive_seed
from casdm.draws import BatchDraws
from casdm.pipeline import to_uint8


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the run stops and the last good checkpoint is kept."""


@dataclass
class RunPaths:
    data: Path  # data/prepared
    checkpoints: Path  # runs/<model>/checkpoints (persist)
    model: Path  # models/<model> (final pipeline, EMA weights)
    metrics: Path  # metrics/train/<model>.json
    plot: Path  # plots/train/<model>.csv


SUMMARY_METRICS = ("final_loss", "first_loss", "s_per_step", "train_s")  # logged once at the end of a run


def train(params: Params, name: str, paths: RunPaths, console=None, hook=None, hook_every: int = 0,
          track: bool = True) -> dict:
    """Train model ``name`` (a key of ``params.models``); returns the final metrics.

    ``hook(step, with_ema)`` runs every ``hook_every`` steps in the main process (Optuna reports an
    intermediate score there and may raise ``TrialPruned``); ``with_ema(fn)`` calls ``fn`` with a
    sampling pipeline holding the EMA weights. ``track=False`` opens no MLflow run of its own (a
    study logs its trials as nested runs instead).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from benchmark.provenance import dataset_hash, hash_json
    from benchmark.tracking import Tracker

    console = console or Console(stderr=True)
    if name not in params.models:
        raise ValueError(f"unknown model {name!r}; params.yaml models: {sorted(params.models)}")
    entry, tc, rc = params.models[name], train_config(params, name), params.runtime  # tc: the model's own lr
    config = training_config(params, name)
    config_hash = hash_json(config)
    data = PreparedDataset(paths.data, "train").check_resolution(params.data.resolution)
    table = data.table
    kind = make_kind(params, name, table)  # a bad kind, loss or class name fails here, before anything starts
    kind.prepare(data)
    accelerator = Accelerator(mixed_precision=mixed_precision(tc.mixed_precision), kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=kind.find_unused_parameters)])
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    if tc.batch_size % world:
        raise ValueError(f"params.yaml: train.batch_size {tc.batch_size} is the global batch and must divide "
                         f"evenly among the {world} processes")
    local_batch = tc.batch_size // world  # the global batch, not the process count, defines the experiment

    model, trainable, opt, lr_sched, ema = _build(kind, tc, accelerator)
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())

    # ---- resume ------------------------------------------------------------------------------
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    start, run_id, history, before = 0, None, [], 0.0
    state = checkpoints.resume(accelerator, kind, model, paths.checkpoints, config_hash, console)
    if state is not None:
        start, run_id, history = state["step"], state.get("mlflow_run_id"), state.get("history", [])
        before = state.get("train_s", 0.0)  # training seconds of the invocations before this one
        console.print(f"[cyan]{name}: resuming from {state['path'].name} (step {start}/{tc.steps})[/]")

    tags = {"model": name, "kind": entry.kind, "role": entry.role, "loss": kind.options.loss,
            "dataset": data.stats.get("source", "?"), "dataset_hash": dataset_hash(paths.data),
            "params_hash": config_hash, "mixed_precision": accelerator.mixed_precision, "seed": str(tc.seed)}
    tracker = Tracker(accelerator.is_main_process and track)
    tracker.start(params.tracking, name, tags, config, run_id)
    if run_id is None:
        tracker.log_param("num_parameters", n_params)
        tracker.log_dataset(paths.data, f"{tags['dataset']}-{params.data.resolution}px", tags["dataset_hash"])
    grid_maps = _grid_batch(paths.data, device)

    loader = DataLoader(data, batch_sampler=StepBatchSampler(len(data), local_batch, tc.seed, start, tc.steps,
                                                             rank, world, kind.frame_weights(data)),
                        num_workers=rc.num_workers)

    def save(step: int) -> None:
        if accelerator.is_main_process:
            checkpoints.save(accelerator, kind, paths.checkpoints, step, {
                "config_hash": config_hash, "train_s": before + time.perf_counter() - t_start,
                "mlflow_run_id": tracker.run_id, "history": history})

    model.train()
    t_start, step, last_grid = time.perf_counter(), start, None
    columns = [TextColumn(f"[bold]{name}[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=console, disable=not accelerator.is_main_process) as bar:
            task = bar.add_task("train", total=tc.steps, completed=start, loss="-", speed="")
            for batch in loader:
                try:
                    loss, terms = _step(kind, accelerator, model, opt, lr_sched, ema, trainable, batch, step, tc)
                except NonFiniteLoss as exc:
                    raise NonFiniteLoss(f"{name}: {exc}; last good checkpoint: "
                                        f"{checkpoints.latest(paths.checkpoints) or 'none'}") from None
                step += 1
                rate = (step - start) / (time.perf_counter() - t_start)
                bar.update(task, completed=step, loss=f"{loss.item():.4g}", speed=f"{rate:.2f} it/s")
                if step % rc.log_every == 0 or step == tc.steps:
                    # the global batch's mean over processes (every process logs at the same steps)
                    values = accelerator.reduce(torch.stack([loss.detach().float(), *(v.detach().float()
                                                                                        for v in terms.values())]), "mean")
                    row = {"step": step, **dict(zip(["loss", *terms], values.tolist())),
                           "lr": lr_sched.get_last_lr()[0], "steps_per_s": rate}
                    history.append(row)
                    tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
                if (step % rc.sample_every == 0 or step == tc.steps) and accelerator.is_main_process:
                    last_grid = _grid(kind, accelerator.unwrap_model(model), ema, trainable, grid_maps)
                    tracker.log_image(last_grid, "samples_map_real_ema_raw", step)
                if hook is not None and hook_every and step % hook_every == 0 and accelerator.is_main_process:
                    hook(step, lambda fn: _with_ema(kind, accelerator.unwrap_model(model), ema, trainable, fn))
                if step % rc.checkpoint_every == 0 or step == tc.steps:
                    save(step)
                    if not console.is_terminal and accelerator.is_main_process:  # DVC and CI logs: a line per checkpoint
                        console.print(f"{name}: step {step}/{tc.steps}, loss {loss.item():.4g}, {rate:.2f} it/s, "
                                      f"checkpoint saved")
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into this): resumable, not failed
        tracker.end(status="KILLED")
        raise
    except BaseException:
        tracker.end(status="FAILED")
        raise
    accelerator.wait_for_everyone()
    if last_grid is None and step >= tc.steps and accelerator.is_main_process:
        # resumed from the final checkpoint (a re-run after an upstream stage re-ran): no step ran, so the
        # grid the finished run drew at its last step is drawn again from the same restored weights
        last_grid = _grid(kind, accelerator.unwrap_model(model), ema, trainable, grid_maps)
    metrics = {}
    if accelerator.is_main_process:
        metrics = _finish(kind, accelerator.unwrap_model(model), ema, trainable, paths, history, n_params,
                          before + time.perf_counter() - t_start, tc.steps, tc.batch_size, last_grid,
                          {"device": str(device), "processes": world, "mixed_precision": accelerator.mixed_precision})
        # the run's summary: scores as metrics under their own names (final_loss, not final_final_loss);
        # counts and settings (parameters, processes, steps) are not measurements: params and tags
        summary = {k: v for k, v in metrics.items() if k in SUMMARY_METRICS}
        tracker.log_metrics(summary, step=step)
        tracker.set_tag("model_path", str(paths.model))  # relative to the project, as dvc.yaml writes it
        tracker.set_tag("processes", str(world))
        tracker.log_model_link(f"{name}-seed{tc.seed}", paths.model, {"model": name, "kind": entry.kind,
                                                                        "role": entry.role, "seed": str(tc.seed)})
        if last_grid is not None:
            tracker.log_image_file(last_grid, "samples/last_grid.png")
    tracker.end()
    return metrics


def _build(kind, tc, accelerator):
    """The network (its initial weights seeded, so an interrupted run and a straight one start alike),
    AdamW, the cosine schedule with warm-up, the EMA (checkpointed with the rest)."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    set_seed(tc.seed)
    model = kind.build()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=tc.lr, betas=tuple(tc.adam_betas), weight_decay=tc.weight_decay)
    lr_sched = get_cosine_schedule_with_warmup(opt, tc.warmup_steps * accelerator.num_processes,
                                               tc.steps * accelerator.num_processes)
    model, opt, lr_sched = accelerator.prepare(model, opt, lr_sched)
    ema = EMAModel(trainable, decay=tc.ema_decay)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return model, trainable, opt, lr_sched, ema


def _step(kind, accelerator, model, opt, lr_sched, ema, trainable, batch, step: int, tc):
    """One optimiser step on ``batch``: the step's draws, augmentation, the kind's hook and loss,
    clipping, the EMA update. Returns the loss and its named terms."""
    rank, world = accelerator.process_index, accelerator.num_processes
    # one seed per step on every process: each draws the global batch's noise and keeps its rows
    g = BatchDraws(derive_seed(tc.seed, step), rank, world)
    torch.manual_seed(derive_seed(tc.seed, step, rank * RANK))  # dropout and anything else global
    images, labels = batch["image"], batch["labels"]
    if tc.augment:
        images, labels = augment(images, labels, g)
    images, labels = images.to(accelerator.device), labels.to(accelerator.device)
    if kind.on_step(step, accelerator.unwrap_model(model)):  # new weights: the EMA restarts
        ema.shadow_params = [p.detach().clone() for p in trainable]
        ema.optimization_step = 0
    with accelerator.accumulate(model):
        loss, terms = kind.loss(model, images, labels, g, accelerator)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss at step {step} ({ {k: v.item() for k, v in terms.items()} })")
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(trainable, tc.grad_clip)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
    ema.step(trainable)
    return loss, terms


def _grid_batch(data_dir: Path, device, n: int = 4) -> dict:
    """The first ``n`` held-out frames (test split, else train): the maps every sample grid shows."""
    for split in ("test", "val", "train"):
        try:
            ds = PreparedDataset(data_dir, split)
            break
        except ValueError:
            continue
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {"image": torch.stack([i["image"] for i in items]), "labels": torch.stack([i["labels"] for i in items]).to(device)}


@contextmanager
def ema_weights(ema, trainable):
    """The EMA weights in the trainable parameters for the block, the training weights restored after."""
    ema.store(trainable)
    ema.copy_to(trainable)
    try:
        yield
    finally:
        ema.restore(trainable)


@contextmanager
def evaluating(model):
    """The model in eval mode for the block, its training mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _with_ema(kind, model, ema, trainable, fn):
    """``fn(pipeline)`` with the EMA weights swapped in, the training weights and mode restored after."""
    with evaluating(model), ema_weights(ema, trainable), torch.no_grad():
        return fn(kind.pipeline(model))


def _grid(kind, model, ema, trainable, grid):
    """Sample grid, rows: map | real | sample from the EMA weights | sample from the raw weights."""
    import numpy as np

    rows = [kind.table.colourise(grid["labels"].cpu().numpy()), to_uint8((grid["image"] + 1) / 2)]
    s = kind.sampling

    def sample():
        g = torch.Generator(device=model.device).manual_seed(0)
        return to_uint8(kind.preview(kind.pipeline(model), grid["labels"], s.num_inference_steps, s.guidance_scale, g))

    with evaluating(model):
        with ema_weights(ema, trainable):
            rows.append(sample())
        rows.append(sample())
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def _finish(kind, model, ema, trainable, paths: RunPaths, history, n_params, seconds, steps,
            batch: int, last_grid=None, run: dict | None = None) -> dict:
    """Export the EMA weights as a pipeline (raw weights beside them) with the last step's sample grid
    (``last_grid.png``: the report shows it), write metrics and the loss curve."""
    from PIL import Image

    with atomic_dir(paths.model) as tmp:
        if last_grid is not None:
            Image.fromarray(last_grid).save(tmp / "last_grid.png")
        kind.export_raw(model, tmp)
        with ema_weights(ema, trainable):
            kind.export(model, tmp)
    tail = history[-max(1, len(history) // 10):]
    metrics = {"steps": steps, "num_parameters": n_params, "map_conditioned_steps": kind.conditioned_steps(steps),
               "images_seen": steps * batch,
               "final_loss": sum(r["loss"] for r in tail) / max(len(tail), 1),
               "first_loss": history[0]["loss"] if history else math.nan,
               "s_per_step": seconds / steps,
               "train_s": seconds,  # training wall time, every invocation of a resumed run added up
               **(run or {})}
    write_json(paths.metrics, metrics)
    write_csv(paths.plot, ["step", *sorted({k for r in history for k in r} - {"step"})], history)
    return metrics
