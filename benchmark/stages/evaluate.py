"""The evaluation stages: what turns samples into the numbers users compare.

- ``real_features``: features of the real test images, and of as many real training images (the
  reference set), once per dataset version and extractor (a DVC out), so no model stage recomputes them.
- ``evaluate_real``: the "real only" row: the semantic-fidelity judge (one segmenter trained on the
  real training split; its score on the real test images is the semantic ceiling), the downstream
  segmenters trained on real images alone, and the image-quality floor: FID/KID/PRDC of real training
  images against the test images, the same extractor and image count as every model's.
- ``evaluate_control``: the size-matched control: downstream on real + the real images of the very
  training maps every model's synthetic set is drawn from (re-showing them is itself an oversampling of
  those frames, rare-class ones first): a synthetic gain the control matches is a selection effect.
- ``evaluate_model``: one model's row: FID/KID/PRDC of its test-map samples, the judge's per-class IoU on
  those samples against the maps that made them, and downstream segmenters trained on real + the
  model's training-map samples with the same step budget and seeds as the real-only row.

Image scores carry bootstrap resamples over the test maps (the same for every row: the leaderboard
pairs them), downstream scores their per-seed values (paired by seed).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from benchmark.config import Params
from benchmark.data.classes import ClassTable
from benchmark.devices import device
from benchmark.metrics.downstream import (
    GeneratedDataset,
    build_segmenter,
    downstream,
    evaluate_segmenter,
    load_judge,
    real_subset,
    train_segmenter,
)
from benchmark.engine.data import PreparedDataset, pick_train_maps
from benchmark.io import atomic_dir, write_csv, write_json
from benchmark.metrics.quality import (
    Extractor,
    bootstrap_fid_kid,
    colour_cast,
    fid_kid,
    files_features,
    make_extractor,
    prdc,
)
from benchmark.metrics.segmentation import SegScores, miou_from_confusion
from benchmark.metrics.stats import bootstrap_indices, corrected_interval
from benchmark.provenance import dataset_hash
from benchmark.results import EvaluationRow, MapScores


def extractor(params: Params) -> Extractor:
    f = params.evaluate.fid
    return make_extractor(f.extractor, device(), f.inception_weights, f.offline_extractor,
                          f.inception_sha256)


def features_file(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name.replace(':', '-')}.npz"


def real_features(params: Params, data_dir: Path, out: Path) -> dict:
    """Features of the real test images and of a seeded draw of as many real training images (the
    reference set: what a generator that reproduced the training data would score) ->
    ``out/<extractor>.npz``."""
    test, train = PreparedDataset(data_dir, "test"), PreparedDataset(data_dir, "train")
    ex = extractor(params)
    rng = np.random.default_rng(params.evaluate.bootstrap.seed)
    picked = sorted(rng.choice(len(train), size=min(len(test), len(train)), replace=False).tolist())
    files = lambda rows: [Path(data_dir) / "images" / f"{r['id']}.png" for r in rows]
    feats = files_features(files(test.rows), ex, device(), params.evaluate.fid.batch_size)
    ref = files_features(files([train.rows[i] for i in picked]), ex, device(), params.evaluate.fid.batch_size)
    meta = {"extractor": ex.name, "dims": ex.dims, "images": len(test), "reference_images": len(picked),
            "dataset_hash": dataset_hash(data_dir)}
    with atomic_dir(out) as tmp:
        np.savez(features_file(tmp, ex.name), features=feats, ids=np.array([r["id"] for r in test.rows]),
                 reference=ref, reference_ids=np.array([train.rows[i]["id"] for i in picked]))
        write_json(tmp / "meta.json", meta)
    return meta


def load_real_features(folder: Path, ex: Extractor, data_dir: Path) -> dict[str, np.ndarray]:
    """``features``/``ids`` of the real test images, ``reference``/``reference_ids`` of the training draw."""
    path, meta_path = features_file(folder, ex.name), Path(folder) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no cached real-image features for extractor {ex.name!r}; "
                                "run `dvc repro features` (or `casdm evaluate features`)")
    meta = json.loads(meta_path.read_text())
    if meta["dataset_hash"] != dataset_hash(data_dir):
        raise ValueError(f"{meta_path}: features were computed on another version of {data_dir}; "
                         "run `dvc repro features`")
    return dict(np.load(path))


def image_quality(params: Params, generated: np.ndarray, real: np.ndarray, ex: Extractor, units: list[str]) -> dict:
    """FID/KID, PRDC, and their bootstrap over the test set's units (``units[i]``: the clip of map i;
    rows of both sets are aligned by map), with bias-corrected intervals."""
    b = params.evaluate.bootstrap
    q = fid_kid(generated, real, ex)
    q["prdc"] = prdc(generated, real, params.evaluate.prdc_k)
    q["bootstrap"] = bootstrap_fid_kid(generated, real, bootstrap_indices(units, b.resamples, b.seed))
    for k in ("fid", "kid"):
        q[f"{k}_low"], q[f"{k}_high"] = corrected_interval(q["bootstrap"][k], q[k], b.level, positive=k == "fid")
    return q


def semantic_summary(params: Params, scores: SegScores, table: ClassTable, units: list[str]) -> dict:
    """The judge's scores on a set of test-map images, with mIoU bootstrapped on the same resamples."""
    b = params.evaluate.bootstrap
    out = scores.summary()
    boots = [miou_from_confusion(scores.per_image[idx].sum(0), table.rare_ids)
             for idx in bootstrap_indices(units, b.resamples, b.seed)]
    out["bootstrap"] = {"miou": [m for m, _ in boots], "rare_miou": [r for _, r in boots]}
    for k in ("miou", "rare_miou"):
        out[f"{k}_low"], out[f"{k}_high"] = corrected_interval(out["bootstrap"][k], out[k], b.level)
    return out


def aligned(real: dict, ids: list[str], where: Path) -> np.ndarray:
    """The real test features in the order of ``ids`` (the generated set's test maps)."""
    pos = {i: k for k, i in enumerate(real["ids"].tolist())}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise ValueError(f"{where}: images of test maps {missing[:3]} have no real test features; run "
                         "`dvc repro features`")
    return real["features"][[pos[i] for i in ids]]


def write_plot(path: Path, table: ClassTable, result: EvaluationRow) -> None:
    """Per-class CSV (DVC plots): semantic IoU and downstream IoU/Dice with spreads; absent = empty."""
    cell = lambda v: "" if v is None else f"{v:.6f}"
    sem, down = result.semantic.iou if result.semantic else {}, result.downstream.per_class
    write_csv(path, ["class", "rare", "semantic_iou", "downstream_iou", "downstream_iou_std", "downstream_dice",
                     "downstream_dice_std"],
              [{"class": c.name, "rare": int(c.rare), "semantic_iou": cell(sem.get(c.name)),
                **{f"downstream_{k}": cell(down[c.name][k]) for k in ("iou", "iou_std", "dice", "dice_std")}}
               for c in table.classes])


def scarce(params: Params, train: PreparedDataset):
    """The real training frames every row's segmenters see (``evaluate.downstream.real_fraction``)."""
    d = params.evaluate.downstream
    return real_subset(train, d.real_fraction, d.subset_seed)


def finish(params_row: dict, t0: float, metrics: Path, plot: Path, table: ClassTable) -> EvaluationRow:
    """The row typed (a part of the wrong shape fails here, not in the leaderboard), timed (the report's
    protocol card shows it) and written: metrics JSON and the per-class plot."""
    result = EvaluationRow.model_validate({**params_row, "seconds": time.perf_counter() - t0})
    write_json(metrics, result.to_json())
    write_plot(plot, table, result)
    return result


def row(name: str, role: str, test: PreparedDataset, train_images: dict, **parts) -> dict:
    return {"model": name, "role": role, "rare_classes": test.table.rare_names, "train_images": train_images, **parts}


def evaluate_real(params: Params, data_dir: Path, features: Path, judge_dir: Path, metrics: Path, plot: Path,
                  log=print) -> EvaluationRow:
    """The real-only row (with the image-quality floor of real training images), and the
    semantic-fidelity judge saved for every model's stage."""
    t0 = time.perf_counter()
    train, test = PreparedDataset(data_dir, "train"), PreparedDataset(data_dir, "test")
    real_set = scarce(params, train)
    sem = params.evaluate.semantic
    judge = train_judge(params, data_dir, judge_dir, log)
    unit = params.evaluate.bootstrap.unit
    ceiling = semantic_summary(params, evaluate_segmenter(judge, test, test.table, device=device()), test.table,
                               test.units(unit))
    ex = extractor(params)
    real = load_real_features(features, ex, data_dir)
    n = min(len(real["reference"]), len(real["features"]))
    floor = image_quality(params, real["reference"][:n], real["features"][:n], ex,
                          test.units(unit, real["ids"][:n].tolist()))
    log(f"reference: real training vs test images, FID {floor['fid']:.3f} ({ex.name}, {n} images each); judge on "
        f"real test images, mIoU {ceiling['miou']:.3f}")
    log(f"downstream, real only: {len(real_set)} images")
    result = row("real", "reference", test, {"real": len(real_set), "synthetic": 0}, quality=floor, semantic=ceiling,
                 judge=judge_label(sem), downstream=downstream(params.evaluate.downstream, [real_set], test, log))
    return finish(result, t0, metrics, plot, test.table)


def train_judge(params: Params, data_dir: Path, judge_dir: Path, log=print) -> torch.nn.Module:
    """The semantic-fidelity judge: ``evaluate.semantic``'s segmenter trained on the real training split,
    saved to ``judge_dir`` for every model's stage."""
    train = PreparedDataset(data_dir, "train")
    sem = params.evaluate.semantic
    log(f"judge: {sem.segmenter} ({sem.encoder_weights}), {sem.steps} steps on {len(train)} real images")
    torch.manual_seed(sem.seed)
    judge = build_segmenter(sem.segmenter, train.table.num_classes, sem.encoder_weights,
                            encoder_file=sem.encoder_files.get(sem.segmenter))
    train_segmenter(judge, [train], sem.steps, sem.batch_size, sem.lr, sem.seed, device())
    with atomic_dir(judge_dir) as tmp:
        torch.save(judge.state_dict(), tmp / "judge.pt")
        write_json(tmp / "judge.json", {"segmenter": sem.segmenter, "encoder_weights": sem.encoder_weights,
                                        "num_classes": train.table.num_classes,
                                        "dataset_hash": dataset_hash(data_dir)})
    return judge


def judge_label(sem) -> str:
    from benchmark.metrics.downstream import segmenter_label

    return f"{segmenter_label(sem.segmenter, sem.encoder_weights)}, {sem.steps} steps on the real training split"


def evaluate_control(params: Params, data_dir: Path, metrics: Path, plot: Path, log=print) -> EvaluationRow:
    """The size-matched control: real + the real images of the training maps every model's synthetic
    training set is drawn from (``sample.train_maps``, ``sample.train_selection``), same seeds and budget."""
    t0 = time.perf_counter()
    train, test = PreparedDataset(data_dir, "train"), PreparedDataset(data_dir, "test")
    real_set = scarce(params, train)
    picked = Subset(train, pick_train_maps(train, params.sample))
    if not len(picked):
        raise ValueError("sample.train_maps is 0: no synthetic training images, so no size-matched control")
    log(f"downstream, real + the real images of the {len(picked)} sampled training maps: {len(real_set)} + "
        f"{len(picked)} images")
    result = row("real+control", "control", test, {"real": len(real_set), "synthetic": 0, "repeated_real": len(picked)},
                 downstream=downstream(params.evaluate.downstream, [real_set, picked], test, log))
    return finish(result, t0, metrics, plot, test.table)


def training_seeds(samples: GeneratedDataset) -> list[int]:
    """The training seed of the weights that drew these images, as the sample stage recorded it: the row
    says which seed it is, and the leaderboard pools a model's rows over its seeds."""
    seed = samples.manifest.made_with.get("training_seed")
    if seed is None:
        raise ValueError(f"{samples.folder / 'manifest.json'}: no training_seed (written before training seeds "
                         "were recorded); run the sample stage again")
    return [int(seed)]


def evaluate_model(params: Params, name: str, data_dir: Path, samples: Path, features: Path, judge_dir: Path,
                   metrics: Path, plot: Path, log=print) -> EvaluationRow:
    """One model's row: image quality, semantic fidelity, downstream with its synthetic pairs."""
    t0 = time.perf_counter()
    train, test = PreparedDataset(data_dir, "train"), PreparedDataset(data_dir, "test")
    real_set = scarce(params, train)
    generated_test, generated_train = GeneratedDataset(samples, "test"), GeneratedDataset(samples, "train")
    ex = extractor(params)
    real = aligned(load_real_features(features, ex, data_dir), [r.id for r in generated_test.records], samples)
    generated = files_features(generated_test.image_files, ex, device(), params.evaluate.fid.batch_size)
    units = test.units(params.evaluate.bootstrap.unit, [r.id for r in generated_test.records])
    quality = image_quality(params, generated, real, ex, units)
    quality["colour"] = colour_cast(generated_test.image_files,
                                    [test.root / "images" / f"{r.id}.png" for r in generated_test.records])
    log(f"{name}: FID {quality['fid']:.3f}, KID {quality['kid']:.4f} ({ex.name}, {len(generated_test)} images), "
        f"precision {quality['prdc']['precision']:.3f}, recall {quality['prdc']['recall']:.3f}, "
        f"colour shift {quality['colour']['colour_shift']:.3f}")
    semantic = semantic_summary(params, evaluate_segmenter(load_judge(judge_dir), generated_test, test.table,
                                                           device=device()), test.table, units)
    log(f"{name}: semantic mIoU {semantic['miou']:.3f}")
    log(f"downstream, real + {name}: {len(real_set)} + {len(generated_train)} images")
    result = row(name, params.models[name].role, test, {"real": len(real_set), "synthetic": len(generated_train)},
                 quality=quality, semantic=semantic, judge=judge_label(params.evaluate.semantic),
                 downstream=downstream(params.evaluate.downstream, [real_set, generated_train], test, log),
                 training_seeds=training_seeds(generated_test))
    return finish(result, t0, metrics, plot, test.table)


def evaluate_maps(params: Params, data_dir: Path, samples: Path, judge_dir: Path, metrics: Path, plot: Path,
                  log=print) -> EvaluationRow:
    """The "real + generated maps" row: downstream segmenters on real + (generated map, image) pairs;
    the judge's IoU of the images against the generated maps that made them; the generator's metrics."""
    t0 = time.perf_counter()
    train, test = PreparedDataset(data_dir, "train"), PreparedDataset(data_dir, "test")
    real_set = scarce(params, train)
    pairs = GeneratedDataset(samples, "train")
    maps_metrics = json.loads((Path(samples) / "metrics.json").read_text())
    name = f"{maps_metrics['image_model']}+maps"
    semantic = evaluate_segmenter(load_judge(judge_dir), pairs, test.table, device=device())
    log(f"{name}: judge on images of generated maps, mIoU {semantic.miou:.3f}")
    log(f"downstream, real + {name}: {len(real_set)} + {len(pairs)} images")
    result = row(name, "generated", test, {"real": len(real_set), "synthetic": len(pairs)}, semantic=semantic.summary(),
                 judge=judge_label(params.evaluate.semantic),
                 maps={who: MapScores.of(maps_metrics[who]).model_dump() for who in ("generator", "baseline")},
                 text_encoder=maps_metrics["text_encoder"],
                 downstream=downstream(params.evaluate.downstream, [real_set, pairs], test, log),
                 training_seeds=training_seeds(pairs))
    return finish(result, t0, metrics, plot, test.table)
