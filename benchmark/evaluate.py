"""The evaluation stages: what turns samples into the numbers users compare.

- ``real_features``: features of the real test images, once per dataset version and extractor
  (a DVC out), so no model stage recomputes them.
- ``evaluate_real``: the "real only" row: the semantic-fidelity judge (one segmenter trained on the
  real training split) and the downstream segmenters trained on real images alone.
- ``evaluate_model``: one model's row: FID/KID of its test-map samples, the judge's per-class IoU on
  those samples against the maps that made them, and downstream segmenters trained on real + the
  model's training-map samples with the same step budget and seeds as the real-only row.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

from benchmark.config import Params
from benchmark.data.classes import ClassTable
from benchmark.downstream import GeneratedDataset, build_segmenter, evaluate_segmenter, train_segmenter
from benchmark.engine.data import PreparedDataset
from benchmark.engine.kind import device
from benchmark.io import atomic_dir, write_csv, write_json
from benchmark.metrics.quality import Extractor, fid_kid, files_features, make_extractor
from benchmark.tracking import dataset_hash

SCALARS = ("miou", "mdice", "rare_miou", "rare_mdice")


def extractor(params: Params) -> Extractor:
    f = params.evaluate.fid
    return make_extractor(f.extractor, device(), f.inception_weights, f.offline_extractor)


def features_file(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name.replace(':', '-')}.npz"


def real_features(params: Params, data_dir: Path, out: Path) -> dict:
    """Features of the real test images with the configured extractor -> ``out/<extractor>.npz``."""
    test = PreparedDataset(data_dir, "test")
    ex = extractor(params)
    files = [Path(data_dir) / "images" / f"{r['id']}.png" for r in test.rows]
    feats = files_features(files, ex, device(), params.evaluate.fid.batch_size)
    meta = {"extractor": ex.name, "dims": ex.dims, "images": len(files), "dataset_hash": dataset_hash(data_dir)}
    with atomic_dir(out) as tmp:
        np.savez(features_file(tmp, ex.name), features=feats, ids=np.array([r["id"] for r in test.rows]))
        write_json(tmp / "meta.json", meta)
    return meta


def load_real_features(folder: Path, ex: Extractor, data_dir: Path) -> np.ndarray:
    path, meta_path = features_file(folder, ex.name), Path(folder) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no cached real-image features for extractor {ex.name!r}; "
                                "run `dvc repro features` (or `casdm evaluate features`)")
    meta = json.loads(meta_path.read_text())
    if meta["dataset_hash"] != dataset_hash(data_dir):
        raise ValueError(f"{meta_path}: features were computed on another version of {data_dir}; "
                         "run `dvc repro features`")
    return np.load(path)["features"]


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over seeds; None where a score is absent (no test pixel)."""
    vals = [v for v in values if v is not None]
    if not vals or len(vals) < len(values):
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(runs: list[dict], names: list[str]) -> dict:
    """Per-seed scores (averaged over segmenters), then mean and spread over seeds."""
    seeds = sorted({r["seed"] for r in runs})
    per_seed = []
    for s in seeds:
        rs = [r for r in runs if r["seed"] == s]
        avg = lambda get: (None if any(get(r) is None for r in rs) else statistics.fmean(get(r) for r in rs))
        per_seed.append({"seed": s, **{k: avg(lambda r, k=k: r[k]) for k in SCALARS},
                         "iou": {n: avg(lambda r, n=n: r["iou"][n]) for n in names},
                         "dice": {n: avg(lambda r, n=n: r["dice"][n]) for n in names}})
    out: dict = {"segmenters": sorted({r["segmenter"] for r in runs}), "seeds": seeds, "per_seed": per_seed}
    for k in SCALARS:
        out[k], out[f"{k}_std"] = _mean_std([p[k] for p in per_seed])
    out["per_class"] = {}
    for n in names:
        iou, iou_std = _mean_std([p["iou"][n] for p in per_seed])
        dice, dice_std = _mean_std([p["dice"][n] for p in per_seed])
        out["per_class"][n] = {"iou": iou, "iou_std": iou_std, "dice": dice, "dice_std": dice_std}
    out["absent"] = [n for n in names if out["per_class"][n]["iou"] is None]
    out["runs"] = runs
    return out


def downstream(params: Params, datasets: list, test: PreparedDataset, log=print) -> dict:
    """Every configured segmenter x seed trained on ``datasets`` and scored on the real test split."""
    cfg, table = params.evaluate.downstream, test.table
    runs = []
    for arch in cfg.segmenters:
        for seed in cfg.seeds:
            torch.manual_seed(seed)
            model = build_segmenter(arch, table.num_classes, cfg.encoder_weights)
            train_segmenter(model, datasets, cfg.steps, cfg.batch_size, cfg.lr, seed, device())
            s = evaluate_segmenter(model, test, table, device=device())
            runs.append({"segmenter": arch, "seed": seed, **{k: getattr(s, k) for k in SCALARS},
                         "iou": s.iou, "dice": s.dice})
            log(f"  {arch} seed {seed}: mIoU {s.miou:.3f}, rare mIoU {s.rare_miou}")
    return aggregate(runs, table.names)


def write_plot(path: Path, table: ClassTable, result: dict) -> None:
    """Per-class CSV (DVC plots): semantic IoU and downstream IoU/Dice with spreads; absent = empty."""
    cell = lambda v: "" if v is None else f"{v:.6f}"
    sem, down = result["semantic"]["iou"], result["downstream"]["per_class"]
    write_csv(path, ["class", "rare", "semantic_iou", "downstream_iou", "downstream_iou_std", "downstream_dice",
                     "downstream_dice_std"],
              [{"class": c.name, "rare": int(c.rare), "semantic_iou": cell(sem[c.name]),
                **{f"downstream_{k}": cell(down[c.name][k]) for k in ("iou", "iou_std", "dice", "dice_std")}}
               for c in table.classes])


def evaluate_real(params: Params, data_dir: Path, judge_dir: Path, metrics: Path, plot: Path, log=print) -> dict:
    """The real-only row, and the semantic-fidelity judge saved for every model's stage."""
    train, test = PreparedDataset(data_dir, "train"), PreparedDataset(data_dir, "test")
    sem = params.evaluate.semantic
    log(f"judge: {sem.segmenter} ({sem.encoder_weights}), {sem.steps} steps on {len(train)} real images")
    torch.manual_seed(sem.seed)
    judge = build_segmenter(sem.segmenter, test.table.num_classes, sem.encoder_weights)
    train_segmenter(judge, [train], sem.steps, sem.batch_size, sem.lr, sem.seed, device())
    with atomic_dir(judge_dir) as tmp:
        torch.save(judge.state_dict(), tmp / "judge.pt")
        write_json(tmp / "judge.json", {"segmenter": sem.segmenter, "encoder_weights": sem.encoder_weights,
                                        "num_classes": test.table.num_classes,
                                        "dataset_hash": dataset_hash(data_dir)})
    reference = evaluate_segmenter(judge, test, test.table, device=device())
    log(f"downstream, real only: {len(train)} images")
    result = {"model": "real", "role": "reference", "rare_classes": test.table.rare_names, "train_images": {"real": len(train), "synthetic": 0},
              "semantic": reference.summary(), "downstream": downstream(params, [train], test, log)}
    write_json(metrics, result)
    write_plot(plot, test.table, result)
    return result


def load_judge(judge_dir: Path) -> torch.nn.Module:
    meta_path = Path(judge_dir) / "judge.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no semantic-fidelity judge; run `dvc repro evaluate-real`")
    meta = json.loads(meta_path.read_text())
    model = build_segmenter(meta["segmenter"], meta["num_classes"], meta["encoder_weights"], load=False)
    model.load_state_dict(torch.load(Path(judge_dir) / "judge.pt", map_location="cpu"))
    return model.eval()


def evaluate_model(params: Params, name: str, data_dir: Path, samples: Path, features: Path, judge_dir: Path,
                   metrics: Path, plot: Path, log=print) -> dict:
    """One model's row: image quality, semantic fidelity, downstream with its synthetic pairs."""
    train, test = PreparedDataset(data_dir, "train"), PreparedDataset(data_dir, "test")
    generated_test, generated_train = GeneratedDataset(samples, "test"), GeneratedDataset(samples, "train")
    ex = extractor(params)
    real = load_real_features(features, ex, data_dir)
    quality = fid_kid(files_features(generated_test.image_files, ex, device(), params.evaluate.fid.batch_size), real, ex)
    log(f"{name}: FID {quality['fid']:.3f}, KID {quality['kid']:.4f} ({ex.name}, {len(generated_test)} images)")
    semantic = evaluate_segmenter(load_judge(judge_dir), generated_test, test.table, device=device())
    log(f"{name}: semantic mIoU {semantic.miou:.3f}")
    log(f"downstream, real + {name}: {len(train)} + {len(generated_train)} images")
    result = {"model": name, "role": params.models[name].role, "rare_classes": test.table.rare_names,
              "train_images": {"real": len(train), "synthetic": len(generated_train)},
              "quality": quality, "semantic": semantic.summary(),
              "downstream": downstream(params, [train, generated_train], test, log)}
    write_json(metrics, result)
    write_plot(plot, test.table, result)
    return result


def evaluate_maps(params: Params, data_dir: Path, samples: Path, judge_dir: Path, metrics: Path, plot: Path,
                  log=print) -> dict:
    """The "real + generated maps" row: downstream segmenters on real + (generated map, image) pairs;
    the judge's IoU of the images against the generated maps that made them; the generator's metrics."""
    train, test = PreparedDataset(data_dir, "train"), PreparedDataset(data_dir, "test")
    pairs = GeneratedDataset(samples, "train")
    maps_metrics = json.loads((Path(samples) / "metrics.json").read_text())
    name = f"{maps_metrics['image_model']}+maps"
    semantic = evaluate_segmenter(load_judge(judge_dir), pairs, test.table, device=device())
    log(f"{name}: judge on images of generated maps, mIoU {semantic.miou:.3f}")
    log(f"downstream, real + {name}: {len(train)} + {len(pairs)} images")
    result = {"model": name, "role": "generated", "rare_classes": test.table.rare_names,
              "train_images": {"real": len(train), "synthetic": len(pairs)}, "semantic": semantic.summary(),
              "maps": {who: {"adherence": maps_metrics[who]["adherence"]["adherence"],
                             "rare_presence": maps_metrics[who]["adherence"]["rare_presence"],
                             "cooccurrence_l1": maps_metrics[who]["realism"]["cooccurrence_l1"],
                             "area_w1": maps_metrics[who]["realism"]["area_w1"],
                             "diversity": maps_metrics[who]["diversity"]} for who in ("generator", "baseline")},
              "text_encoder": maps_metrics["text_encoder"],
              "downstream": downstream(params, [train, pairs], test, log)}
    write_json(metrics, result)
    write_plot(plot, test.table, result)
    return result
