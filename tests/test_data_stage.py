"""Splits and the prepare stage (the DVC data stages run, then are cached: the tiny run, tests/test_pipeline.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data.classes import CHOLECSEG8K, IGNORE_INDEX
from benchmark.data.prepare import load_prepared, prepare
from benchmark.data.sources import DatasetError, Frame
from benchmark.data.splits import split_frames
from tests.conftest import REPO, tiny_params


def split_cfg(**over):
    """params.yaml's split section with ``over`` (validated)."""
    return type(tiny_params().data.split).model_validate({**tiny_params().data.split.model_dump(), **over})


def data_cfg(**over):
    return type(tiny_params().data).model_validate({**tiny_params().data.model_dump(), **over})


def fake_frames(videos=17, per_video=80 * 6 - 5):
    return [Frame(f"v{v}_{i}", f"video{v:02d}", f"video{v:02d}_00000", Path("x"), Path("y"))
            for v in range(videos) for i in range(per_video)]


def test_random_split_is_paper_sized_and_deterministic():
    frames = fake_frames(17, 8080 // 17 + 1)[:8080]
    a = split_frames(frames, split_cfg(kind="random", seed=1))
    b = split_frames(frames, split_cfg(kind="random", seed=1))
    c = split_frames(frames, split_cfg(kind="random", seed=2))
    assert a == b and a != c
    assert sum(s == "test" for s in a.values()) == 1212
    assert sum(s == "train" for s in a.values()) == 6868


def test_video_split_keeps_videos_whole():
    frames = fake_frames(17, 5)
    split = split_frames(frames, split_cfg(test_videos=[12, "video13"], val_videos=["14"]))
    by_video = {}
    for f in frames:
        by_video.setdefault(f.video, set()).add(split[f.id])
    assert by_video["video12"] == {"test"} and by_video["video13"] == {"test"} and by_video["video14"] == {"val"}
    assert all(len(s) == 1 for s in by_video.values())


def test_video_split_unknown_video_is_named():
    with pytest.raises(DatasetError, match=r"test_videos: video\(s\) \['video99'\] not in the dataset"):
        split_frames(fake_frames(3, 2), split_cfg(test_videos=[99]))


def test_prepare_writes_resized_data_stats_and_coverage(synth_root, tmp_path):
    cfg = data_cfg(source="cholecseg8k", root=str(synth_root), resolution=32)
    stats = prepare(cfg, tmp_path / "prepared", tmp_path / "metrics.json")
    rows, table, stats2 = load_prepared(tmp_path / "prepared")
    assert stats2 == json.loads(json.dumps(stats))
    assert len(rows) == 34 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert sum(r["split"] == "test" for r in rows) == 8  # 4 test videos x 2 frames
    assert {r["video"] for r in rows if r["split"] == "val"} == {"video27", "video28", "video43"}  # data.split.val_videos
    img = Image.open(tmp_path / "prepared" / "images" / f"{rows[0]['id']}.png")
    mask = np.asarray(Image.open(tmp_path / "prepared" / "masks" / f"{rows[0]['id']}.png"))
    assert img.size == (32, 32) and img.mode == "RGB" and mask.shape == (32, 32)
    assert set(np.unique(mask)) <= set(range(13)) | {IGNORE_INDEX}
    for split in ("train", "val", "test"):
        share = stats["splits"][split]["class_pixel_share"]
        assert abs(sum(share.values()) - 1) < 1e-9
        missing = stats["missing"][split]
        assert missing == [n for n, k in stats["splits"][split]["class_frames"].items() if k == 0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["frames"] == 8
    assert not list(tmp_path.glob(".prepared.tmp-*"))


def test_prepare_failure_leaves_nothing_behind(synth_copy, tmp_path):
    mask = sorted(synth_copy.rglob("*_watershed_mask.png"))[-1]
    Image.fromarray(np.full((48, 64), 99, np.uint8)).save(mask)
    cfg = data_cfg(source="cholecseg8k", root=str(synth_copy), resolution=32)
    with pytest.raises(DatasetError, match="99"):
        prepare(cfg, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()
    assert not list(tmp_path.glob(".prepared.tmp-*"))


@pytest.fixture(scope="module")
def default_raw(tmp_path_factory) -> Path:
    """The default params' synthetic dataset, generated once for the checks of its coverage (read-only)."""
    from benchmark.config import load_params
    from benchmark.data.synthetic import generate

    raw = tmp_path_factory.mktemp("default") / "raw"
    generate(load_params(REPO / "params.yaml").data.synthetic, raw)
    return raw


def test_default_synthetic_dataset_covers_every_class_in_train_and_test(tmp_path, default_raw):
    """The default params' seed was chosen for full coverage; a generator change that breaks it fails here."""
    from benchmark.config import load_params

    p = load_params(REPO / "params.yaml")
    cfg = p.data.model_copy(update={"root": str(default_raw)})
    stats = prepare(cfg, tmp_path / "prepared")
    assert stats["missing"]["train"] == [] and stats["missing"]["test"] == []
    # the validation video (studies) holds three of the four rare classes, training keeps every class
    assert set(stats["missing"]["val"]).isdisjoint({"Cystic Duct", "Hepatic Vein", "Liver Ligament"})
    train = stats["splits"]["train"]["class_frame_share"]
    assert train["Liver"] == 1.0 and train["Cystic Duct"] < 0.1 and train["Hepatic Vein"] < 0.1


def test_the_default_validation_split_can_score_every_leaderboard_metric(tmp_path, default_raw):
    """params.yaml's validation videos: more frames than the FID layer has dimensions (FID's covariance is
    singular below that), and every rare class in validation and still in training."""
    from benchmark.config import load_params
    from benchmark.metrics.quality import EFFNET_BLOCK_CHANNELS

    p = load_params(REPO / "params.yaml")
    cfg = p.data.model_copy(update={"source": "cholecseg8k", "root": str(default_raw), "resolution": 32})
    stats = prepare(cfg, tmp_path / "prepared", tmp_path / "metrics.json")
    val, train = stats["splits"]["val"], stats["splits"]["train"]
    layer = p.evaluate.fid.offline_extractor.partition(":blocks.")[2]
    assert val["frames"] > EFFNET_BLOCK_CHANNELS[int(layer)] == 112
    for name in CHOLECSEG8K.rare_names:
        assert val["class_frames"][name] > 0 and train["class_frames"][name] > 0, name
