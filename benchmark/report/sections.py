"""The report's sections, in reading order, as plain dicts for the templates. Each returns
``{"skipped": reason}`` when its inputs are absent, so a partial state still gives a page that says
what it lacks. Pictures go into ``assets`` (name -> PNG bytes)."""
from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmark.metrics.stats import higher_is_better
from benchmark.provenance import dataset_hash, git_commit, redact, redact_tree
from benchmark.report import figures
from benchmark.report.inputs import Inputs, file_hash
from benchmark.report.tables import FID_CAVEAT, VERDICT_RULE, fmt, label
from benchmark.results import CONTROL, REAL, Comparison, Difference
from benchmark.tracking import flatten

REFERENCES = (REAL, CONTROL)
LADDER_METRICS = ("downstream_miou", "downstream_rare_miou", "fid", "semantic_miou")
SAMPLE_ROWS = 6  # test maps shown: rare-class maps first
BUDGET_RULE = ("every model: {steps} optimiser steps of {batch} images ({images} images seen), from scratch; "
               "map-conditioned steps per model below (a recipe that withholds the map for part of its steps, "
               "ControlNet's base phase or SDM's guidance phase, counts only the rest)")


def protocol(inp: Inputs) -> dict:
    """Dataset, models, evaluation and provenance: what a reader needs to trust or repeat the numbers."""
    p, stats = inp.params, inp.data_stats
    data = {"source": p.data.source, "root": p.data.root, "resolution": p.data.resolution,
            "split": p.data.split.kind, "test_videos": p.data.split.test_videos, "val_videos": p.data.split.val_videos}
    if stats is not None:
        data["version"] = dataset_hash(inp.paths.data)
        data["frames"] = {s: v["frames"] for s, v in stats["splits"].items()}
        data["coverage"] = {s: sum(n > 0 for n in v["class_frames"].values()) for s, v in stats["splits"].items()}
        data["classes"] = len(next(iter(stats["splits"].values()))["class_frames"])
    models = []
    for name in inp.models:
        entry, tr, sm = p.models[name], inp.train.get(name, {}), inp.sample.get(name, {})
        models.append({"name": name, "kind": entry.kind, "role": entry.role, "loss": entry.training.get("loss", "-"),
                       "preset": p.train.preset, "parameters": tr.get("num_parameters"), "steps": tr.get("steps"),
                       "images_seen": tr.get("images_seen"), "map_conditioned_steps": tr.get("map_conditioned_steps"),
                       "sampler": entry.sampling.scheduler,
                       "sampling_steps": entry.sampling.num_inference_steps, "guidance": entry.sampling.guidance_scale,
                       "device": tr.get("device", "-"), "precision": tr.get("mixed_precision", "-"),
                       "train_s": tr.get("train_s"), "sample_s": (sm["s_per_image"] * sm["images"]) if sm else None,
                       "evaluate_s": inp.rows[name].seconds if name in inp.rows else None})
    quality = next((r.quality for r in inp.rows.values() if r.quality), None)
    any_row = next(iter(inp.rows.values()), None)
    ds = any_row.downstream if any_row else None
    evaluation = {"fid_extractor": quality.extractor if quality else "-",
                  "fid_images": f"{quality.images_generated} generated vs {quality.images_real} real" if quality else "-",
                  "judge": (any_row.judge if any_row else None) or "-",
                  "segmenter": "; ".join(ds.segmenter_labels.values()) if ds and ds.segmenter_labels else "-",
                  "downstream_seeds": ds.seeds if ds else None, "downstream_steps": p.evaluate.downstream.steps,
                  "bootstrap": f"{p.evaluate.bootstrap.resamples} resamples by {p.evaluate.bootstrap.unit}, "
                               f"{p.evaluate.bootstrap.level:.0%} bias-corrected intervals; verdicts Holm-adjusted "
                               "within each comparison family",
                  "train_seeds": p.train.seeds, "sample_seed": p.sample.seed,
                  "budget": BUDGET_RULE.format(steps=p.train.steps, batch=p.train.batch_size,
                                               images=p.train.steps * p.train.batch_size)}
    provenance = {"git_commit": git_commit(), "dvc_lock": file_hash(inp.paths.lock) or "no dvc.lock"}
    return {"data": data, "models": models, "evaluation": evaluation, "provenance": provenance,
            "environment": environment()}


LIBRARIES = ("torch", "diffusers", "accelerate", "clean-fid", "segmentation-models-pytorch", "mlflow", "dvc", "optuna")


def environment() -> dict:
    """Library versions and hardware of the machine that built the report (the stages of one ``dvc repro``
    ran on it too; each model's device and precision are in the models table)."""
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from benchmark.devices import cpu_model

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"python": platform.python_version(), "libraries": {n: ver(n) for n in LIBRARIES}, "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}


def _comparison(inp: Inputs, a: str, b: str, metric: str) -> Comparison | None:
    return next((c for c in inp.comparisons if (c.a, c.b, c.metric) == (a, b, metric)), None)


def _delta_text(c: Comparison | Difference | None, metric: str) -> str:
    if c is None:
        return "no comparison"
    interval = "" if c.low is None else f" [{c.low:+.3f}, {c.high:+.3f}]"
    text = f"{c.delta:+.3f}{interval}, {c.verdict}"
    if isinstance(c, Comparison):
        if c.p_adjusted is not None:
            text += f" (Holm-adjusted p {c.p_adjusted:.3f} in its family)"
        if c.verdict == "indistinguishable" and c.mde is not None:
            text += f", detectable effect {c.mde:.3f}"
        if c.scope == "weights":
            text += "; one training seed: a difference between these weights, not a method's win"
            if c.seed_sd is not None and c.seed_sd_from != "this run":
                text += f" (seed-to-seed sd of this difference in the {c.seed_sd_from} run: {c.seed_sd:.3f})"
    return text


def headline(inp: Inputs) -> dict:
    """The method against its best baseline and against real only, on the primary metric, in one sentence."""
    p, board = inp.params, inp.leaderboard
    primary = p.leaderboard.primary
    methods = [m for m in inp.models if p.models[m].role == "method"]
    if not methods:
        return {"skipped": "no model with role: method in params.yaml has a leaderboard row"}
    method = methods[0]
    sign = 1 if p.leaderboard.sort == "desc" else -1
    baselines = [m for m in inp.models if p.models[m].role == "baseline" and board[m].value(primary) is not None]
    best = max(baselines, key=lambda m: sign * board[m].value(primary)) if baselines else None
    value = board[method].value(primary)
    spread = board[method].cells[primary].std if primary in board[method].cells else None
    parts = [f"{method} reaches {primary} {value:.3f}" + (f" ± {spread:.3f}" if spread is not None else "")]
    if best:
        parts.append(f"against the best baseline, {best} ({board[best].value(primary):.3f}), "
                     f"{_delta_text(_comparison(inp, method, best, primary), primary)}")
    if REAL in board:
        parts.append(f"against real only ({board[REAL].value(primary) if board[REAL].value(primary) is not None else float('nan'):.3f}), "
                     f"{_delta_text(_comparison(inp, method, REAL, primary), primary)}")
    ranked = sorted((m for m in inp.models if board[m].value(primary) is not None),
                    key=lambda m: -sign * board[m].value(primary))
    top = ranked[0] if ranked else None
    lead = ""
    if top:
        lead = (f"The top row on {primary} is {top} ({board[top].value(primary):.3f}, role {p.models[top].role}); "
                f"{method} ranks {ranked.index(method) + 1} of {len(ranked)}"
                + ("" if top == method else f", {_delta_text(_comparison(inp, method, top, primary), primary)}")
                + ". ")
    return {"sentence": lead + "; ".join(parts) + ".", "method": method, "best_baseline": best, "primary": primary,
            "top": top}


def leaderboard(inp: Inputs) -> dict:
    """The columns a reader needs first, best model value per column marked; every column folded below."""
    rows = list(inp.leaderboard.items())
    fid = next((k for k in next(iter(inp.leaderboard.values())).cells if k.startswith("fid:")), None)
    main = [c for c in (fid, "colour_shift", "semantic_miou", "downstream_miou", "downstream_rare_miou",
                        "delta_miou", "delta_rare_miou", "vs_control_miou", "vs_control_rare_miou") if c]
    models = [n for n, _ in rows if n not in REFERENCES]
    best = {}
    for c in main:
        vals = [(inp.leaderboard[n].value(c), n) for n in models if inp.leaderboard[n].value(c) is not None]
        if vals and not c.startswith(("delta_", "vs_control_")):
            best[c] = (max if higher_is_better(c) else min)(vals)[1]
    every = sorted({k for _, r in rows for k in r.cells})
    table = [{"model": n, "role": r.role, "reference": n in REFERENCES,
              "cells": [{"text": fmt(r.cells.get(c), c), "best": best.get(c) == n} for c in main],
              "all": [fmt(r.cells.get(c), c) for c in every]} for n, r in rows]
    return {"columns": main, "labels": [label(c) for c in main], "rows": table, "all_columns": every,
            "fid_caveat": FID_CAVEAT if fid else None}


def ladder(inp: Inputs, assets: dict) -> dict:
    steps = [c for c in inp.comparisons if c.kind == "ladder step"]
    if not steps:
        return {"skipped": "no ladder comparisons (leaderboard.ladder names fewer than two evaluated models)"}
    metrics = [m for m in LADDER_METRICS if any(c.metric == m for c in steps)]
    assets["ladder"] = figures.forest(steps, metrics)
    return {"steps": [{"step": c.step, "metric": c.metric, "text": _delta_text(c, c.metric), "verdict": c.verdict}
                      for c in steps if c.metric in metrics], "rule": VERDICT_RULE.replace("`", "")}


def per_class(inp: Inputs, assets: dict) -> dict:
    names = [n for n in (REAL, *inp.models) if n in inp.rows]
    if not names:
        return {"skipped": f"no evaluation rows in {inp.paths.rows}"}
    first = inp.rows[names[0]]
    classes = list(first.downstream.per_class)
    rare = set(first.rare_classes)
    for metric in ("iou", "dice"):
        series = {n: {c: (v or {}).get(metric) for c, v in inp.rows[n].downstream.per_class.items()} for n in names}
        spread = {n: {c: (v or {}).get(f"{metric}_std") for c, v in inp.rows[n].downstream.per_class.items()}
                  for n in names}
        assets[f"per_class_{metric}"] = figures.per_class_bars(series, classes, rare, metric, spread,
                                                               len(first.downstream.seeds) or None)
    return {"rare": sorted(rare), "absent": {n: inp.rows[n].downstream.absent for n in names}}


def _pick_maps(inp: Inputs) -> list[str]:
    """Test maps for the sample rows: one per rare class (the first holding it), then the first of each video."""
    from benchmark.engine.data import PreparedDataset

    test = PreparedDataset(inp.paths.data, "test")
    masks, ids = test.masks(), [r["id"] for r in test.rows]
    chosen = []
    for cid in test.table.rare_ids:
        k = next((i for i, m in enumerate(masks) if (m == cid).any() and ids[i] not in chosen), None)
        if k is not None:
            chosen.append(ids[k])
    for fid in ids:
        video = fid.split("_")[0]
        if len(chosen) >= SAMPLE_ROWS:
            break
        if not any(c.startswith(video + "_") for c in chosen):
            chosen.append(fid)
    return chosen[:SAMPLE_ROWS]


def samples(inp: Inputs, assets: dict) -> dict:
    from benchmark.data.prepare import load_prepared
    from benchmark.manifest import Manifest

    if inp.data_stats is None:
        return {"skipped": inp.missing["data"]}
    shown = [m for m in inp.models if inp.samples_of(m)]
    if not shown:
        return {"skipped": f"no samples under {inp.paths.samples}"}
    _, table, _ = load_prepared(inp.paths.data)
    ids, out = _pick_maps(inp), {}
    cells = []
    for fid in ids:
        lab = np.asarray(Image.open(inp.paths.data / "masks" / f"{fid}.png"))
        row = [table.colourise(lab[None])[0], np.asarray(Image.open(inp.paths.data / "images" / f"{fid}.png").convert("RGB"))]
        for m in shown:
            f = inp.samples_of(m) / "test" / f"{fid}.png"
            row.append(np.asarray(Image.open(f).convert("RGB")) if f.exists() else None)
        present = [table.names[c] for c in np.unique(lab) if c < table.num_classes and table.classes[c].rare]
        cells.append((row, fid + ("\nrare: " + ", ".join(present) if present else "")))
    assets["samples"] = figures.grid([r for r, _ in cells], ["map", "real", *shown], [lbl for _, lbl in cells])
    out["maps"] = ids
    folder = inp.paths.samples / "maps"
    if (folder / "manifest.json").exists():
        man = Manifest.read(folder)
        recs = man.split("train")[:4]
        rows = [[table.colourise(np.asarray(Image.open(man.map_path(folder, r)))[None])[0],
                 np.asarray(Image.open(folder / r.image).convert("RGB"))] for r in recs]
        assets["generated_maps"] = figures.grid(rows, ["generated map", "image"], [r.id for r in recs])
        out["prompts"] = [{"id": r.id, "prompt": r.prompt} for r in recs]
    else:
        out["maps_skipped"] = f"no generated maps under {folder} (the maps stage did not run)"
    return out


def training(inp: Inputs, assets: dict) -> dict:
    curves = {}
    for name in [*inp.models, "mapgen"]:
        f = inp.paths.train_plots / f"{name}.csv" if name == "mapgen" else inp.of_seed(inp.paths.train_plots, name, ".csv")
        if f.exists():
            with f.open() as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("loss")]
            curves[name] = ([float(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    if not curves:
        return {"skipped": f"no loss curves in {inp.paths.train_plots}"}
    assets["loss"] = figures.loss_curves(curves)
    speeds = {n: 1 / t["s_per_step"] for n, t in inp.train.items() if t.get("s_per_step")}
    grids = []
    for name in inp.models:
        g = inp.of_seed(inp.paths.models, name) / "last_grid.png"
        if g.exists():
            assets[f"grid_{name}"] = figures.png_file(g)
            grids.append(name)
    return {"speeds": speeds, "grids": grids}


def study(inp: Inputs, assets: dict) -> dict:
    """Optimisation history, importances, best trial vs trial 0 (the configured weights)."""
    import optuna

    from benchmark.study.store import save_plots, storage_for, storage_url

    s = inp.params.study
    url = storage_url(inp.params, folder=inp.paths.studies)  # the folder comes from dvc.yaml (--studies)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {"skipped": f"no study {s.name!r} ({url.removeprefix('sqlite:///')} absent; `casdm study run` makes one)"}
    try:
        st = optuna.load_study(study_name=s.name, storage=storage_for(inp.params, folder=inp.paths.studies))
    except KeyError:
        return {"skipped": f"study {s.name!r} not found in {redact(url)}"}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for png in save_plots(st, inp.params, Path(tmp)):
            assets[f"study_{png.stem}"] = png.read_bytes()
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return {"skipped": f"study {s.name!r} has no complete trial"}
    from benchmark.study.store import pick_best, versus_configured

    best, objective = pick_best(st, inp.params), s.objectives[0]
    t0, found = versus_configured(st, inp.params, best, inp.paths.studies)
    return {"name": s.name, "trials": len(st.trials), "complete": len(done), "objective": objective,
            "best": {"number": best.number, "value": best.values[0], "params": best.params},
            "trial0": None if t0 is None else {"number": t0.number, "value": t0.values[0]},
            "delta": None if t0 is None else best.values[0] - t0.values[0],
            "comparison": None if found is None else _delta_text(found, objective),
            "plots": [k for k in assets if k.startswith("study_")]}


def reproduce(inp: Inputs) -> dict:
    """The commands, and params.yaml against the committed one (git HEAD): what this run changed."""
    commit = git_commit()
    cmds = [f"git checkout {commit.removesuffix('-dirty')}", "python3.11 -m venv .venv && .venv/bin/pip install -e '.[offline,test]'",
            "dvc repro"]
    try:
        head = subprocess.run(["git", "show", f"HEAD:{inp.paths.params.as_posix()}"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        head = None
    if head is None or head.returncode != 0:
        return {"commands": cmds, "diff_skipped": f"no committed {inp.paths.params} to compare with"}
    return {"commands": cmds, "diff": params_diff(yaml.safe_load(head.stdout), yaml.safe_load(inp.paths.params.read_text()))}


def params_diff(old: dict, new: dict) -> list[dict]:
    """Flattened keys whose value differs (added and removed keys included)."""
    a, b = flatten(redact_tree(old or {})), flatten(redact_tree(new or {}))  # a storage URL's password: never shown
    return [{"key": k, "old": a.get(k, "-"), "new": b.get(k, "-")} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
