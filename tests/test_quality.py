"""FID/KID: equal to clean-fid called directly with the same extractor; a set against itself ~0;
too few images is a clear error; the offline EfficientNet-Lite0 loads completely."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.metrics.quality import Extractor, efficientnet_lite0, fid_kid, folder_features, inception


def tiny_extractor() -> Extractor:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 7, stride=4).double()  # float64: no run-to-run kernel noise

    @torch.no_grad()
    def fn(x):
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(conv(x.double() / 255.0)), 1).flatten(1)

    return Extractor("tiny-test", 8, fn)


def write_images(folder, n, seed, shift=0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.clip(rng.normal(120 + shift, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def test_fid_and_kid_equal_clean_fid_called_directly(tmp_path):
    from cleanfid import fid

    a, b = write_images(tmp_path / "a", 30, 0), write_images(tmp_path / "b", 30, 1, shift=30)
    ex = tiny_extractor()
    ours = fid_kid(folder_features(a, ex), folder_features(b, ex), ex)
    direct_fid = fid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=ex.fn,
                                 device=torch.device("cpu"), num_workers=0, verbose=False)
    fa = fid.get_folder_features(str(a), ex.fn, num_workers=0, device=torch.device("cpu"), mode="clean", verbose=False)
    fb = fid.get_folder_features(str(b), ex.fn, num_workers=0, device=torch.device("cpu"), mode="clean", verbose=False)
    assert ours["fid"] == pytest.approx(direct_fid, rel=1e-9)
    assert ours["kid"] == pytest.approx(float(fid.kernel_distance(fa, fb)), rel=1e-9)
    assert ours["fid"] > 1e-3 and ours["extractor"] == "tiny-test"
    same = fid_kid(folder_features(a, ex), folder_features(a, ex), ex)
    assert abs(same["fid"]) < 1e-6


def test_too_few_images_for_the_feature_size_is_a_clear_error(tmp_path):
    a = write_images(tmp_path / "a", 6, 0)
    ex = tiny_extractor()
    with pytest.raises(ValueError, match=r"needs more than 8 images per set; got 6 generated and 6 real"):
        fid_kid(folder_features(a, ex), folder_features(a, ex), ex)
    with pytest.raises(FileNotFoundError, match="no images"):
        folder_features(tmp_path, ex)


def test_efficientnet_lite0_loads_every_weight_and_gives_features():
    ex = efficientnet_lite0()
    x = torch.rand(2, 3, 64, 64) * 255
    f = ex.fn(x)
    assert f.shape == (2, 1280) and torch.isfinite(f).all() and ex.name == "efficientnet_lite0"
    assert not torch.allclose(f[0], f[1])


def test_missing_inception_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        inception("cpu", tmp_path / "inception-2015-12-05.pt")


def test_colour_cast_is_the_largest_channel_gap_of_the_mean_colours(tmp_path):
    from PIL import Image

    from benchmark.metrics.quality import colour_cast

    real, gen = [], []
    for i in range(3):
        real.append(tmp_path / f"r{i}.png")
        Image.new("RGB", (8, 8), (10, 20, 30)).save(real[-1])
        gen.append(tmp_path / f"g{i}.png")
        Image.new("RGB", (8, 8), (10, 20 + 51 * (i == 0), 30)).save(gen[-1])  # one image 51 greener: mean +17
    c = colour_cast(gen, real)
    assert c["real_mean_rgb"] == [10.0, 20.0, 30.0] and c["mean_rgb"] == [10.0, 37.0, 30.0]
    assert abs(c["colour_shift"] - 17 / 255) < 1e-9


def test_kid_is_the_same_on_every_run_and_leaves_numpys_rng_alone():
    from benchmark.metrics.quality import kid

    g = np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32)
    r = np.random.default_rng(1).normal(size=(120, 16)).astype(np.float32)
    np.random.seed(5)
    expected_next = np.random.rand()
    np.random.seed(5)
    values = {kid(g, r, num_subsets=1) for _ in range(4)} | {kid(g, r, num_subsets=1)}
    assert len(values) == 1  # clean-fid alone permutes with the global RNG: the 7th digit moved run to run
    assert np.random.rand() == expected_next


def test_inception_weights_are_loaded_only_from_a_pinned_private_file(tmp_path, monkeypatch):
    """A planted /tmp file is never looked at; a configured file with another SHA-256 than the pin, or one
    others can write, is refused before TorchScript runs it; unpinned, its hash is printed to pin."""
    import hashlib
    import os

    import cleanfid.inception_torchscript as its

    from benchmark.metrics.quality import INCEPTION_FILE, make_extractor, pinned

    loaded = []
    monkeypatch.setattr(its.InceptionV3W, "__init__", lambda self, path, **kw: loaded.append(path) or None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    planted = Path("/tmp") / INCEPTION_FILE  # where the suite used to look; another local user could write it
    ours = not planted.exists()
    if ours:
        planted.write_bytes(b"planted TorchScript")
    try:
        assert make_extractor("auto", "cpu", None, "efficientnet_lite0").name == "efficientnet_lite0"
    finally:
        if ours:
            planted.unlink()
    assert loaded == []

    weights = tmp_path / "w" / INCEPTION_FILE
    weights.parent.mkdir()
    weights.write_bytes(b"not the real weights")
    good = hashlib.sha256(b"not the real weights").hexdigest()
    with pytest.raises(ValueError, match=rf"{weights}: sha256 {good}, expected {'0' * 64} .*refusing"):
        inception("cpu", weights, "0" * 64)
    assert loaded == []
    lines = []
    assert pinned(weights, None, lines.append) == weights and good in lines[0] and "not pinned" in lines[0]
    os.chmod(weights, 0o666)
    with pytest.raises(ValueError, match="writable by others"):
        inception("cpu", weights, good)
    assert loaded == []


def test_a_cut_inception_download_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    import cleanfid.downloads_helper as dl

    from benchmark.metrics.quality import INCEPTION_FILE, weights_cache

    def cut(fpath):  # half a file written, then the network goes away
        (Path(fpath) / INCEPTION_FILE).write_bytes(b"half")
        raise OSError("connection reset")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(dl, "check_download_inception", cut)
    with pytest.raises(RuntimeError, match="could not be downloaded \\(connection reset\\); put inception-2015-12-05.pt"):
        inception("cpu")
    assert list(weights_cache().iterdir()) == []  # no half file in the cache, no temp folder left
