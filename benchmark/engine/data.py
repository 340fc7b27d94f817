"""Training data from the prepared dataset, with batches that depend only on (seed, step).

Why step-indexed batches: a run killed at step k and restarted resumes with exactly the batches,
augmentations and noise it would have seen, so the resumed weights equal an uninterrupted run's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from benchmark.config import SampleConfig
from benchmark.data.classes import IGNORE_INDEX
from benchmark.data.prepare import load_prepared
from casdm.draws import BatchDraws, as_draws


class DataFileError(ValueError):
    """A data file that cannot be used, named with what was expected of it: one line.

    torch's DataLoader re-raises a worker's error as ``type(exc)(message=<the worker's traceback>)``;
    this class keeps only the traceback's last line, so the one-line error survives ``num_workers > 0``."""

    def __init__(self, message: str):
        if "Traceback" in message:  # from a DataLoader worker: "...\nbenchmark...DataFileError: <the line>"
            message = message.strip().splitlines()[-1].split("DataFileError: ", 1)[-1]
        super().__init__(message)


def load_pair(image: Path, mask: Path, num_classes: int | None = None, size: int | None = None) -> dict:
    """An RGB PNG as a [3, H, W] tensor in [-1, 1] and a class-id PNG as [H, W] int64. A file that cannot
    be decoded (truncated, not a PNG), a mask of another size than its image (or than ``size``), and a
    class id outside ``0..num_classes-1`` (255 = ignore is allowed) fail naming the file."""
    try:
        img = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{image}: cannot be read as an image ({exc}); expected an RGB PNG") from None
    try:
        lab = np.asarray(Image.open(mask), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{mask}: cannot be read as a class-id map ({exc}); expected a one-channel PNG") from None
    want = (size, size) if size else img.shape[:2]
    if img.shape[:2] != want:
        raise DataFileError(f"{image}: {img.shape[1]}x{img.shape[0]} px; expected {want[1]}x{want[0]} "
                            "(data.resolution of the prepared data)")
    if lab.shape != want:
        raise DataFileError(f"{mask}: {'x'.join(map(str, lab.shape[::-1]))} px; expected a one-channel "
                            f"{want[1]}x{want[0]} map, the size of its image")
    if num_classes is not None:
        bad = np.setdiff1d(np.unique(lab), [*range(num_classes), IGNORE_INDEX])
        if bad.size:
            raise DataFileError(f"{mask}: class id {int(bad[0])} (of {bad.size} unknown); expected 0..{num_classes - 1}"
                                f" or {IGNORE_INDEX} (ignore), the prepared classes.json")
    return {"image": torch.from_numpy(img).permute(2, 0, 1) / 127.5 - 1, "labels": torch.from_numpy(lab)}


class PreparedDataset(Dataset):
    """Images in [-1, 1] and class-id maps (255 = ignore) of one split of ``data/prepared``."""

    def __init__(self, root: str | Path, split: str = "train"):
        self.root = Path(root)
        rows, self.table, self.stats = load_prepared(self.root)
        self.rows = [r for r in rows if r["split"] == split]
        if not self.rows:
            raise ValueError(f"{self.root / 'frames.csv'}: no frames in split {split!r}")

    def check_resolution(self, resolution: int) -> "PreparedDataset":
        """Refuse data prepared at another size than params.yaml's ``data.resolution``: a model would be
        built for one size, trained at the other, and recorded at the first."""
        made = self.stats.get("resolution")
        if made != resolution:
            raise ValueError(f"{self.root}: prepared at {made} px, params.yaml data.resolution is {resolution}; "
                             "run `dvc repro prepare` (or set data.resolution back)")
        return self

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        fid = self.rows[i]["id"]
        return {**load_pair(self.root / "images" / f"{fid}.png", self.root / "masks" / f"{fid}.png",
                            self.table.num_classes, self.stats.get("resolution")), "id": fid}

    def units(self, unit: str, ids: list[str] | None = None) -> list[str]:
        """The unit of independence of each frame (of ``ids``, default the split's rows in order): its
        ``clip`` (video and clip), its ``video``, or the ``frame`` itself: what a bootstrap resamples."""
        by = {r["id"]: r for r in self.rows}
        label = {"clip": lambda r: f"{r['video']}/{r['clip']}", "video": lambda r: str(r["video"]),
                 "frame": lambda r: r["id"]}[unit]
        return [label(by[i]) for i in (ids if ids is not None else [r["id"] for r in self.rows])]

    def masks(self) -> list[np.ndarray]:
        """Every class-id map of the split, in row order (prompts, map statistics, map selection)."""
        return [np.asarray(Image.open(self.root / "masks" / f"{r['id']}.png")) for r in self.rows]


class StepBatchSampler(Sampler):
    """Per-process batches for steps [start, end): epoch e is a permutation seeded by (seed, e).

    With several processes (DDP) the global batch of ``batch_size * world`` indices is cut into one
    slice per rank, so processes never see the same frames in a step. With ``weights`` each step's
    global batch is drawn with replacement in proportion to them, seeded by (seed, step): still the
    same batches whether a run was resumed or not.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, end: int, rank: int = 0, world: int = 1,
                 weights: list[float] | None = None):
        self.n, self.b, self.seed, self.start, self.end = n, batch_size, seed, start, end
        self.rank, self.world = rank, world
        self.p = None if weights is None else np.asarray(weights, dtype=np.float64) / float(np.sum(weights))

    def batch(self, step: int) -> list[int]:
        idx, size = [], self.b * self.world
        if self.p is not None:
            idx = np.random.default_rng([self.seed, step, 1]).choice(self.n, size=size, replace=True, p=self.p).tolist()
            return idx[self.rank * self.b: (self.rank + 1) * self.b]
        pos = step * size
        while len(idx) < size:
            epoch, offset = divmod(pos, self.n)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            take = perm[offset: offset + size - len(idx)]
            idx.extend(int(i) for i in take)
            pos += len(take)
        return idx[self.rank * self.b: (self.rank + 1) * self.b]

    def __iter__(self):
        for step in range(self.start, self.end):
            yield self.batch(step)

    def __len__(self) -> int:
        return self.end - self.start


def augment(images: torch.Tensor, labels: torch.Tensor, generator: BatchDraws | torch.Generator):
    """The paper's augmentations, applied jointly to image and map: h/v flips, 90-degree rotations."""
    out_i, out_l = [], []
    draws = as_draws(generator).rand((images.shape[0], 3))
    for img, lab, (h, v, r) in zip(images, labels, draws.tolist()):
        if h < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        if v < 0.5:
            img, lab = img.flip(-2), lab.flip(-2)
        if r < 0.5 and img.shape[-1] == img.shape[-2]:
            img, lab = img.rot90(1, (-2, -1)), lab.rot90(1, (-2, -1))
        out_i.append(img)
        out_l.append(lab)
    return torch.stack(out_i), torch.stack(out_l)


def pick_train_maps(data: PreparedDataset, cfg: SampleConfig) -> list[int]:
    """Indices of the training maps to turn into images: ``rare_first`` takes maps holding a rare
    class first (each group in a seeded random order), ``random`` a seeded random draw."""
    n = len(data) if cfg.train_maps is None else min(cfg.train_maps, len(data))
    order = np.random.default_rng(cfg.seed).permutation(len(data)).tolist()
    if cfg.train_selection == "rare_first":
        rare, masks = set(data.table.rare_ids), data.masks()
        has_rare = {i for i in order if rare & set(np.unique(masks[i]))}
        order = [i for i in order if i in has_rare] + [i for i in order if i not in has_rare]
    return sorted(order[:n])
