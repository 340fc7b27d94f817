"""Train/val/test splits: video-level (default; consecutive frames are near-duplicates) or the
paper-compatible random frame split (leaky, kept to reproduce the paper's numbers)."""
from __future__ import annotations

import numpy as np

from benchmark.config import SplitConfig
from benchmark.data.sources import DatasetError, Frame


def _video_name(v: int | str, known: set[str]) -> str:
    """Accept 12, "12", "video12" for CholecSeg8K-style names, or any folder name as written."""
    if isinstance(v, str) and v in known:
        return v
    if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
        return f"video{int(v):02d}"
    return str(v)


def split_frames(frames: list[Frame], cfg: SplitConfig) -> dict[str, str]:
    """Map frame id -> "train" | "val" | "test"; a frame of an excluded video has no entry (it is in no split)."""
    if cfg.kind == "video":
        known = {f.video for f in frames}
        test = {_video_name(v, known) for v in cfg.test_videos}
        val = {_video_name(v, known) for v in cfg.val_videos}
        excluded = {_video_name(v, known) for v in cfg.exclude_videos}
        for field, names in (("test_videos", test), ("val_videos", val), ("exclude_videos", excluded)):
            missing = sorted(names - known)
            if missing:
                raise DatasetError(f"params.yaml: data.split.{field}: video(s) {missing} not in the dataset; "
                                   f"available: {sorted(known)}")
        if test & val:
            raise DatasetError(f"params.yaml: data.split: videos {sorted(test & val)} are in both test and val")
        if excluded & (test | val):
            raise DatasetError(f"params.yaml: data.split.exclude_videos: {sorted(excluded & (test | val))} are also "
                               "test or val videos; an excluded video is in no split")
        frames = [f for f in frames if f.video not in excluded]
        known -= excluded
        if not test:
            raise DatasetError("params.yaml: data.split.test_videos: empty; a video split needs test videos")
        if known <= test | val:
            raise DatasetError("params.yaml: data.split: every video is in test/val; nothing left to train on")
        return {f.id: "test" if f.video in test else "val" if f.video in val else "train" for f in frames}
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(frames))
    n_test = int(round(cfg.test_fraction * len(frames)))
    n_val = int(round(cfg.val_fraction * len(frames)))
    if n_test < 1 or n_test + n_val >= len(frames):
        raise DatasetError(f"params.yaml: data.split: test_fraction {cfg.test_fraction} and val_fraction "
                           f"{cfg.val_fraction} leave no test or no train frames out of {len(frames)}")
    split = {}
    for rank, i in enumerate(order):
        split[frames[i].id] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split
