"""Experiment screens: one model, several settings, scored by the leaderboard's own stages.

Which split a screen scores on: validation, always, unless the test split is asked for by name.

The test split is for the leaderboard only: a screen that chooses a default (a learning rate, a
sampler, a step budget) and scores on the test maps tunes the benchmark towards its own leaderboard.
A screen that trains runs in a scratch copy whose split is re-pointed (``validation_override``): the
copy's "test" role is played by the validation videos, the leaderboard's test videos are in no split
at all (``data.split.exclude_videos``), and the stages that score are the leaderboard's own.
``--split test --allow-test-split`` scores on the real test split anyway (to re-check a leaderboard
number, never to choose a default), as a study's ``allow_test_split`` does.
"""
from __future__ import annotations

import argparse

SPLITS = ("val", "test")


def add_split_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--split", choices=SPLITS, default="val",
                    help="the maps the screen scores on: val (default) or test (only with --allow-test-split)")
    ap.add_argument("--allow-test-split", action="store_true",
                    help="score on the leaderboard's test split: for re-checking a number, never for a default")


def check_split(split: str, allow_test: bool) -> None:
    """Refuse the test split unless asked for by name."""
    if split == "test" and not allow_test:
        raise SystemExit("--split test: the test split is for the leaderboard only, and a screen chooses defaults; "
                         "score on validation (the default), or add --allow-test-split to re-check a number")


def validation_override(params) -> dict:
    """The params.yaml override that makes a scratch copy score on the validation videos: they become the
    copy's test videos, the real test videos are held out of every split."""
    split = params.data.split
    if split.kind != "video":
        raise SystemExit(f"data.split.kind {split.kind!r}: a screen scores on validation videos, which only the "
                         "video split has; use data.split.kind: video or --split test --allow-test-split")
    if not split.val_videos:
        raise SystemExit("data.split.val_videos: empty; a screen scores on validation videos (list some in params.yaml)")
    return {"data": {"split": {"test_videos": list(split.val_videos), "val_videos": [],
                               "exclude_videos": [*split.exclude_videos, *split.test_videos]}}}


def scores_on_validation(params) -> bool:
    """Whether a project (a screen's copy) scores on validation: its test videos are someone's validation
    videos and the leaderboard's test videos are held out (what ``validation_override`` writes)."""
    split = params.data.split
    return split.kind == "video" and bool(split.exclude_videos) and not split.val_videos
