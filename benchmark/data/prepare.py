"""The data stage: read a source, split it, resize it, count classes, write the prepared dataset.

Outputs (all DVC outs): ``images/<id>.png`` (RGB), ``masks/<id>.png`` (class ids, 255 = ignore),
``frames.csv`` (id, video, clip, split), ``classes.json`` (the class table), ``stats.json``
(per split: per-class pixel share and frame share; the class-aware losses read the train shares),
``strays.json`` (documented stray codes per file) and a small coverage metrics JSON.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.config import DataConfig
from benchmark.io import atomic_dir, read_json, write_json
from benchmark.data.classes import IGNORE_INDEX, ClassTable
from benchmark.data.sources import open_source
from benchmark.data.splits import split_frames

SPLITS = ("train", "val", "test")
FRAME_COLUMNS = ("id", "video", "clip", "split")  # frames.csv, in this order


def coverage_stats(counts: dict[str, np.ndarray], frames: dict[str, np.ndarray], nframes: dict[str, int],
                table: ClassTable) -> dict:
    """Per split: frames, per-class frame count, frame share and pixel share (labelled pixels only)."""
    out = {}
    for s in SPLITS:
        if not nframes[s]:
            continue
        px = counts[s]
        total = max(int(px.sum()), 1)
        out[s] = {
            "frames": nframes[s],
            "class_frames": {n: int(frames[s][i]) for i, n in enumerate(table.names)},
            "class_frame_share": {n: float(frames[s][i] / nframes[s]) for i, n in enumerate(table.names)},
            "class_pixel_share": {n: float(px[i] / total) for i, n in enumerate(table.names)},
        }
    return out


def coverage(stats: dict, table: ClassTable) -> dict[str, list[str]]:
    """Classes with no frame in a split: their per-class metrics there are undefined, not 0."""
    return {s: [n for n in table.names if stats[s]["class_frames"][n] == 0] for s in stats}


def prepare(cfg: DataConfig, out: Path, metrics: Path | None = None, progress=None) -> dict:
    source = open_source(cfg.source, Path(cfg.root))
    table = source.table
    split = split_frames(source.frames, cfg.split)
    K, r = table.num_classes, cfg.resolution
    counts = {s: np.zeros(K, np.int64) for s in SPLITS}
    frames = {s: np.zeros(K, np.int64) for s in SPLITS}
    nframes = dict.fromkeys(SPLITS, 0)
    strays: dict[str, dict[int, int]] = {}
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        rows = []
        for frame in source.frames:
            if frame.id not in split:  # a video held out of every split (data.split.exclude_videos)
                continue
            sample = source.load(frame)
            if sample.strays:
                strays[str(frame.mask)] = sample.strays
            img = Image.fromarray(sample.image).resize((r, r), Image.BILINEAR)
            lab = Image.fromarray(sample.labels).resize((r, r), Image.NEAREST)
            img.save(tmp / "images" / f"{frame.id}.png")
            lab.save(tmp / "masks" / f"{frame.id}.png")
            s = split[frame.id]
            arr = np.asarray(lab)
            c = np.bincount(arr[arr != IGNORE_INDEX], minlength=K)[:K]
            counts[s] += c
            frames[s] += c > 0
            nframes[s] += 1
            rows.append((frame.id, frame.video, frame.clip, s))
            if progress is not None:
                progress()
        with (tmp / "frames.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(FRAME_COLUMNS)
            w.writerows(rows)
        stats = {
            "source": cfg.source, "resolution": r, "ignore_index": IGNORE_INDEX,
            "split": cfg.split.model_dump(), "splits": coverage_stats(counts, frames, nframes, table),
        }
        stats["missing"] = coverage(stats["splits"], table)
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "classes.json", table.to_dict())
        write_json(tmp / "strays.json", {"files": strays, "total_pixels": {
            str(code): sum(d.get(code, 0) for d in strays.values())
            for code in sorted({c for d in strays.values() for c in d})}})
    if metrics is not None:
        write_json(Path(metrics), {
            s: {"frames": v["frames"], "classes_present": K - len(stats["missing"][s]),
                "classes_missing": len(stats["missing"][s])}
            for s, v in stats["splits"].items()} | {"stray_files": len(strays)})
    return stats


def load_prepared(root: Path) -> tuple[list[dict], ClassTable, dict]:
    """Read a prepared dataset's index: frame rows, class table, stats."""
    root = Path(root)
    for name in ("frames.csv", "classes.json", "stats.json"):
        if not (root / name).exists():
            raise FileNotFoundError(f"{root / name}: missing; run the data stage (dvc repro prepare) first")
    with (root / "frames.csv").open(encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in FRAME_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{root / 'frames.csv'}: no column {', '.join(missing)}; expected the columns "
                             f"{', '.join(FRAME_COLUMNS)} (re-run `dvc repro prepare`)")
        rows = list(reader)
    table = ClassTable.from_dict(read_json(root / "classes.json", "the class table the data stage wrote"),
                                 str(root / "classes.json"))
    return rows, table, read_json(root / "stats.json", "the split statistics the data stage wrote")


def coverage_table(stats: dict):
    """Per-class frames and pixel share of each split (``stats.json``), as a rich Table; absent in red."""
    from rich.table import Table

    splits = stats["splits"]
    t = Table(title=f"class coverage ({stats['resolution']} px, {stats['split']['kind']} split)")
    t.add_column("class")
    for s in splits:
        t.add_column(f"{s} frames ({splits[s]['frames']})", justify="right")
        t.add_column(f"{s} pixel %", justify="right")
    names = list(next(iter(splits.values()))["class_frames"])
    for n in names:
        row = [n]
        for s in splits:
            k = splits[s]["class_frames"][n]
            row += [str(k) if k else "[red]0[/]", f"{100 * splits[s]['class_pixel_share'][n]:.2f}"]
        t.add_row(*row)
    return t
