"""Readers for the datasets the suite accepts: CholecSeg8K's Kaggle layout and a generic folder.

Both give the same thing: a list of ``Frame`` records (which image, which mask, which video) and a
``load`` that returns an RGB uint8 image and a uint8 label map whose unlabelled pixels are
``IGNORE_INDEX``. Every problem is a ``DatasetError`` naming the file and, where there is one, the value.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from benchmark.data.classes import CHOLECSEG8K, IGNORE_INDEX, ClassTable

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated PNG must be an error, never half an image


class DatasetError(ValueError):
    """A dataset problem; the message names the file (and value) at fault."""


@dataclass(frozen=True)
class Frame:
    id: str  # unique across the dataset, safe as a file name
    video: str
    clip: str
    image: Path
    mask: Path


@dataclass
class Sample:
    image: np.ndarray  # H x W x 3 uint8
    labels: np.ndarray  # H x W uint8, IGNORE_INDEX where unlabelled
    strays: dict[int, int]  # documented stray code -> pixel count (mapped to ignore)


def read_png(path: Path) -> Image.Image:
    """Open and fully decode an image, turning every decoder failure into a DatasetError."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated image ({exc})") from None
    return img


def read_rgb(path: Path) -> np.ndarray:
    img = read_png(path)
    if img.mode not in ("RGB", "RGBA", "L", "P"):
        raise DatasetError(f"{path}: unsupported image mode {img.mode!r}, expected RGB")
    return np.asarray(img.convert("RGB"))


def _single_channel(path: Path) -> np.ndarray:
    """Watershed masks come as L, RGB (R=G=B) or RGBA with an all-255 alpha; return one channel."""
    img = read_png(path)
    arr = np.asarray(img)
    if img.mode == "P":
        raise DatasetError(f"{path}: palette PNG where a grey-level mask was expected")
    if arr.ndim == 2:
        return arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        if arr.shape[2] == 4:
            if not (arr[..., 3] == 255).all():
                raise DatasetError(f"{path}: 4-channel mask whose alpha channel is not all 255")
            arr = arr[..., :3]
        if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()):
            raise DatasetError(f"{path}: colour mask with unequal channels; expected a grey-level watershed mask")
        return arr[..., 0].astype(np.uint8)
    raise DatasetError(f"{path}: unexpected mask shape {arr.shape}")


def _check_sizes(frame: Frame, image: np.ndarray, labels: np.ndarray) -> None:
    if image.shape[:2] != labels.shape:
        raise DatasetError(
            f"{frame.mask}: mask size {labels.shape[1]}x{labels.shape[0]} does not match image "
            f"{frame.image.name} size {image.shape[1]}x{image.shape[0]}")


class CholecSeg8k:
    """CholecSeg8K in its Kaggle layout: ``videoXX/videoXX_SSSSS/frame_N_endo{,_watershed_mask}.png``."""

    name = "cholecseg8k"
    IMAGE = re.compile(r"frame_(\d+)_endo\.png$")
    MASK_SUFFIX = "_endo_watershed_mask.png"

    def __init__(self, root: Path, table: ClassTable = CHOLECSEG8K):
        self.root = Path(root)
        self.table = table
        self._lut = table.watershed_lut()
        self.frames = self._scan()

    def _scan(self) -> list[Frame]:
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root does not exist or is not a folder")
        frames = []
        for clip_dir in sorted(self.root.glob("video*/video*_*")):
            if not clip_dir.is_dir():
                continue
            video = clip_dir.parent.name
            masks = {p.name[: -len(self.MASK_SUFFIX)] for p in clip_dir.glob("frame_*" + self.MASK_SUFFIX)}
            images = {}
            for p in clip_dir.glob("frame_*_endo.png"):
                if self.IMAGE.search(p.name):
                    images[p.name[: -len("_endo.png")]] = p
            for stem in sorted(masks - set(images), key=_natural):
                raise DatasetError(f"{clip_dir / (stem + '_endo.png')}: missing image for mask "
                                   f"{stem + self.MASK_SUFFIX}")
            for stem in sorted(images, key=_natural):
                mask = clip_dir / (stem + self.MASK_SUFFIX)
                if stem not in masks:
                    raise DatasetError(f"{mask}: missing watershed mask for image {images[stem].name}")
                frames.append(Frame(f"{clip_dir.name}_{stem}", video, clip_dir.name, images[stem], mask))
        if not frames:
            raise DatasetError(f"{self.root}: no frames found; expected videoXX/videoXX_SSSSS/frame_N_endo.png "
                               "with frame_N_endo_watershed_mask.png beside each")
        return frames

    def load(self, frame: Frame) -> Sample:
        image = read_rgb(frame.image)
        codes = _single_channel(frame.mask)
        mapped = self._lut[codes]
        bad = np.unique(codes[mapped < 0])
        if bad.size:
            raise DatasetError(f"{frame.mask}: unknown watershed value(s) {bad.tolist()}; expected one of "
                               f"{sorted(c.watershed for c in self.table.classes)} or ignore codes "
                               f"{list(self.table.ignore_watershed)}")
        strays = {int(v): int((codes == v).sum()) for v in self.table.stray_watershed if (codes == v).any()}
        labels = mapped.astype(np.uint8)
        _check_sizes(frame, image, labels)
        return Sample(image, labels, strays)


class FolderDataset:
    """A generic dataset: ``images/**/*.png``, ``masks/**/*.png`` (class-index PNGs), ``classes.yaml``.

    Images may sit in one sub-folder per video (``images/<video>/x.png``) so video-level splits work;
    flat folders form one video named after the root.
    """

    name = "folder"

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root does not exist or is not a folder")
        try:
            self.table = ClassTable.from_yaml(self.root / "classes.yaml")
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        self.frames = self._scan()

    def _scan(self) -> list[Frame]:
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        images = {p.relative_to(img_dir).with_suffix(""): p for p in img_dir.rglob("*.png")}
        masks = {p.relative_to(mask_dir).with_suffix(""): p for p in mask_dir.rglob("*.png")}
        for rel in sorted(set(masks) - set(images)):
            raise DatasetError(f"{masks[rel]}: mask has no image {img_dir / rel}.png")
        frames = []
        for rel in sorted(images, key=lambda r: _natural(str(r))):
            if rel not in masks:
                raise DatasetError(f"{mask_dir / rel}.png: missing mask for image {images[rel]}")
            video = rel.parts[0] if len(rel.parts) > 1 else self.root.name
            frames.append(Frame("_".join(rel.parts), video, video, images[rel], masks[rel]))
        if not frames:
            raise DatasetError(f"{self.root}: no frames found; expected images/*.png and masks/*.png")
        return frames

    def load(self, frame: Frame) -> Sample:
        image = read_rgb(frame.image)
        img = read_png(frame.mask)
        if img.mode not in ("L", "P"):
            raise DatasetError(f"{frame.mask}: mask mode {img.mode!r}; expected a single-channel class-index PNG")
        labels = np.asarray(img).astype(np.uint8)
        valid = (labels < self.table.num_classes) | (labels == IGNORE_INDEX)
        if not valid.all():
            bad = np.unique(labels[~valid]).tolist()
            raise DatasetError(f"{frame.mask}: class index value(s) {bad} out of range; expected 0.."
                               f"{self.table.num_classes - 1} or {IGNORE_INDEX} (ignore)")
        _check_sizes(frame, image, labels)
        return Sample(image, labels, {})


SOURCES = {"cholecseg8k": CholecSeg8k, "folder": FolderDataset}


def open_source(kind: str, root: Path) -> CholecSeg8k | FolderDataset:
    """Open a dataset by source name (``synthetic`` data is written in the CholecSeg8K layout)."""
    kind = "cholecseg8k" if kind == "synthetic" else kind
    if kind not in SOURCES:
        raise DatasetError(f"unknown data source {kind!r}; expected one of {sorted(SOURCES)} or 'synthetic'")
    return SOURCES[kind](Path(root))


@dataclass
class ValidationReport:
    frames: int
    videos: list[str]
    class_frames: Counter  # class id -> frames holding it
    strays: dict[str, dict[int, int]]  # file -> {code: pixels}
    errors: list[str]


def validate(source: CholecSeg8k | FolderDataset, max_errors: int = 20, progress=None) -> ValidationReport:
    """Load every frame; collect (not stop at) the errors so a user fixes them in one pass."""
    class_frames: Counter = Counter()
    strays, errors = {}, []
    for frame in source.frames:
        try:
            sample = source.load(frame)
        except DatasetError as exc:
            errors.append(str(exc))
            if len(errors) >= max_errors:
                errors.append(f"... stopped after {max_errors} errors")
                break
            continue
        finally:
            if progress is not None:
                progress()
        present = np.unique(sample.labels)
        class_frames.update(int(c) for c in present if c != IGNORE_INDEX)
        if sample.strays:
            strays[str(frame.mask)] = sample.strays
    return ValidationReport(len(source.frames), sorted({f.video for f in source.frames}), class_frames,
                            strays, errors)


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
