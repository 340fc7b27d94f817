"""Screens choose defaults, so they score on validation: the test split only when asked for by name,
and a screen's copy holds the leaderboard's test videos out of every split."""
from __future__ import annotations

import pytest

from bench.screens import budget, sampler
from bench.screens import check_split, scores_on_validation, validation_override
from benchmark.config import deep_merge, parse_params
from benchmark.data.splits import split_frames
from tests.conftest import REPO, tiny_params
from tests.test_data_stage import fake_frames


@pytest.mark.parametrize("screen", [budget, sampler])
def test_a_screen_refuses_the_test_split_unless_asked_by_name(screen):
    with pytest.raises(SystemExit, match="the test split is for the leaderboard only"):
        screen.main(["--split", "test"])
    check_split("test", allow_test=True)  # asked for by name: allowed
    check_split("val", allow_test=False)


def test_the_sampler_screen_refuses_a_project_that_scores_on_the_leaderboards_test_split():
    with pytest.raises(SystemExit, match="this project's test split is the leaderboard's"):
        sampler.main(["--root", str(REPO)])


def test_a_screens_copy_scores_on_validation_and_never_sees_a_test_video():
    p = tiny_params()
    screen = parse_params(deep_merge(p.model_dump(mode="json"), validation_override(p)), "screen")
    assert scores_on_validation(screen) and not scores_on_validation(p)
    frames = fake_frames(60, 3)
    split = split_frames(frames, screen.data.split)
    video = {f.id: f.video for f in frames}
    test_names = {f"video{int(v):02d}" for v in p.data.split.test_videos}
    val_names = {f"video{int(v):02d}" for v in p.data.split.val_videos}
    assert {video[i] for i, s in split.items() if s == "test"} == val_names  # the copy's test: validation
    assert not test_names & {video[i] for i in split}  # the leaderboard's test videos: in no split
    assert {s for s in split.values()} == {"train", "test"}
