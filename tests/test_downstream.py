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


@pytest.mark.parametrize("arch,suffix", [("unet", ".pth"), ("segformer", ".safetensors")])
def test_imagenet_encoder_weights_load_from_a_local_file_offline(monkeypatch, tmp_path, arch, suffix):
    """An offline GPU box: encoder_files names smp's published state dict (classifier head included, as
    published); every encoder tensor comes from it and nothing is downloaded. A partial file, a file of
    another encoder and a missing path each fail naming the file."""
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    donor = build_segmenter(arch, 13, "none").encoder.state_dict()
    published = {**{k: v.clone() for k, v in donor.items()}, "fc.weight": torch.zeros(1000, 4)}
    path = tmp_path / f"{arch}{suffix}"
    (save_file if suffix == ".safetensors" else lambda d, f: torch.save(d, f))(published, str(path))
    torch.manual_seed(2)
    model = build_segmenter(arch, 13, "imagenet", encoder_file=str(path))
    assert all(torch.equal(v, donor[k]) for k, v in model.encoder.state_dict().items())
    assert not all(torch.equal(v, donor[k]) for k, v in build_segmenter(arch, 13, "none").encoder.state_dict().items())
    partial = tmp_path / "partial.pth"
    torch.save(dict(list(donor.items())[:3]), partial)
    with pytest.raises(ValueError, match=rf"encoder_files\.{arch}: .*partial\.pth holds 3 of the"):
        build_segmenter(arch, 13, "imagenet", encoder_file=str(partial))
    other = tmp_path / "other.pth"  # the other segmenter's encoder: none of its names fit
    torch.save(build_segmenter("segformer" if arch == "unet" else "unet", 13, "none").encoder.state_dict(), other)
    with pytest.raises(ValueError, match=rf"encoder_files\.{arch}: .*other\.pth holds 0 of the"):
        build_segmenter(arch, 13, "imagenet", encoder_file=str(other))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match=r"garbage\.pth cannot be read as a state dict"):
        build_segmenter(arch, 13, "imagenet", encoder_file=str(garbage))
    with pytest.raises(FileNotFoundError, match=rf"encoder_files\.{arch}: /nonexistent/w.pth is not a file"):
        build_segmenter(arch, 13, "imagenet", encoder_file="/nonexistent/w.pth")


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
