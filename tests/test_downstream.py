"""Downstream segmenters: build, train on real or real + generated data, score on the real test split."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.metrics.downstream import GeneratedDataset, build_segmenter, evaluate_segmenter, train_segmenter
from benchmark.engine.data import PreparedDataset
from benchmark.manifest import ImageRecord, Manifest


def fake_samples(prepared, folder, n=4, split="train"):
    """A sample stage's output: images of one split with a manifest that points at the maps."""
    (folder / split).mkdir(parents=True)
    data = PreparedDataset(prepared, split)
    records = []
    for i in range(n):
        fid = data.rows[i]["id"]
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(folder / split / f"{fid}.png")
        records.append(ImageRecord(id=fid, split=split, image=f"{split}/{fid}.png",
                                   map=str(prepared / "masks" / f"{fid}.png"), seed=i))
    Manifest(model="fake", images=records, made_with={"scheduler": "none"}).write(folder)
    return folder


@pytest.mark.parametrize("arch", ["segformer", "unet"])
def test_train_on_real_plus_generated_and_score_the_real_test_split(prepared, tmp_path, arch):
    real = PreparedDataset(prepared, "train")
    generated = GeneratedDataset(fake_samples(prepared, tmp_path / "samples"))
    assert len(generated) == 4 and generated[0]["image"].shape == (3, 32, 32)
    model = build_segmenter(arch, real.table.num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    train_segmenter(model, [real, generated], steps=3, batch_size=4, lr=1e-3, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    test = PreparedDataset(prepared, "test")
    scores = evaluate_segmenter(model, test, test.table)
    support = np.zeros(13, int)
    for i in range(len(test)):
        lab = test[i]["labels"].numpy()
        support += np.bincount(lab[lab != 255], minlength=13)[:13]
    assert scores.absent == [n for n, k in zip(test.table.names, support) if k == 0]
    assert 0 <= scores.miou <= 1


def test_offline_efficientnet_encoder_weights_load_and_imagenet_fails_fast(monkeypatch):
    model = build_segmenter("unet", 13, "efficientnet_lite0")
    from benchmark.metrics.quality import effnet_state

    stem = effnet_state()["conv_stem.weight"]
    assert torch.equal(model.encoder.model.conv_stem.weight, stem)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1"):
        build_segmenter("segformer", 13, "imagenet")
    with pytest.raises(ValueError, match="unknown segmenter 'deeplab'"):
        build_segmenter("deeplab", 13)


def test_missing_manifest_or_split_is_named(prepared, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        GeneratedDataset(tmp_path)
    folder = fake_samples(prepared, tmp_path / "samples", n=2, split="test")
    assert len(GeneratedDataset(folder, "test")) == 2
    with pytest.raises(ValueError, match="no generated images from train maps"):
        GeneratedDataset(folder, "train")
    (folder / "manifest.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"manifest\.json: not a manifest of generated images"):
        GeneratedDataset(folder, "test")


def test_a_scarce_real_set_is_whole_clips_nested_across_fractions(prepared):
    from benchmark.metrics.downstream import real_subset

    train = PreparedDataset(prepared, "train")
    units = train.units("clip")
    kept = {f: set(real_subset(train, f, seed=0).indices) for f in (0.25, 0.5)}
    assert real_subset(train, 1.0, seed=0) is train  # the whole split, untouched
    assert kept[0.25] < kept[0.5] < set(range(len(train)))  # nested, and scarcer than the whole
    for idx in kept.values():  # never part of a clip: every frame of a kept clip is kept
        clips = {units[i] for i in idx}
        assert idx == {i for i, u in enumerate(units) if u in clips}
    assert kept[0.25] != set(real_subset(train, 0.25, seed=1).indices) or len(set(units)) < 3  # the seed picks
