"""Intervals, verdicts, bootstraps and PRDC against hand computations and the reference implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.metrics.quality import bootstrap_fid_kid, fid_kid, prdc
from benchmark.metrics.segmentation import SegmentationMeter, miou_from_confusion
from benchmark.metrics.stats import bootstrap_indices, paired_bootstrap, paired_seeds, percentile, decide


def test_paired_seed_interval_and_verdict_match_a_hand_computation():
    ours, theirs = {0: 0.61, 1: 0.58, 2: 0.64}, {0: 0.55, 1: 0.57, 2: 0.60}
    r = paired_seeds(ours, theirs, "miou")
    d = [0.06, 0.01, 0.04]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # Student t, 2 degrees of freedom, 97.5 %
    assert r.delta == pytest.approx(mean) and r.n == 3
    assert (r.low, r.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert r.low < 0 < r.high and r.verdict == "indistinguishable"  # 0.037 [-0.025, 0.099]
    wide = paired_seeds({0: 0.7, 1: 0.71, 2: 0.69}, theirs, "miou")
    assert wide.low > 0 and wide.verdict == "better"
    assert paired_seeds(theirs, {0: 0.7, 1: 0.71, 2: 0.69}, "miou").verdict == "worse"
    one = paired_seeds({0: 0.7}, {0: 0.5}, "miou")
    assert one.low is None and one.verdict == "indistinguishable"  # one seed: no interval, no claim
    assert paired_seeds({0: None, 1: 0.2}, {0: 0.1, 1: 0.1}, "rare_miou") is None  # absent stays absent


def test_lower_is_better_for_fid_and_kid():
    assert decide(-2.0, 0.001, 0.05, higher_better=False) == "better"  # a lower FID is the better one
    rng = np.random.default_rng(0)
    a, b = list(rng.normal(10, 1, 200)), list(rng.normal(20, 1, 200))
    r = paired_bootstrap(a, b, -10.0, "fid")
    assert r.high < 0 and r.p < 0.01 and r.verdict == "better"  # A has the lower FID on every resample
    assert paired_bootstrap(list(rng.normal(0.55, 0.02, 200)), list(rng.normal(0.42, 0.02, 200)), 0.12,
                            "semantic_miou").verdict == "better"
    # the p is a normal test against the resamples' sd: no floor at 1 / (resamples + 1)
    diffs = np.array([10.0, 11.0, 12.0, 9.0]) - np.array([20.0, 22.0, 19.0, 21.0])
    few = paired_bootstrap([10.0, 11.0, 12.0, 9.0], [20.0, 22.0, 19.0, 21.0], -10.0, "fid")
    from scipy.stats import norm
    assert few.p == pytest.approx(2 * norm.sf(10.0 / np.std(diffs, ddof=1))) and few.p < 1 / 5
    assert few.mde == pytest.approx((1.959964 + 0.841621) * np.std(diffs, ddof=1), rel=1e-5)
    same = paired_bootstrap([10.0, 11.0, 12.0], [10.5, 10.5, 11.5], 0.1, "fid")
    assert same.p > 0.5 and same.verdict == "indistinguishable"


def test_bootstrap_resamples_are_shared_and_percentiles_are_numpys():
    a, b = bootstrap_indices(list(range(10)), 50, seed=3), bootstrap_indices(list(range(10)), 50, seed=3)
    assert len(a) == 50 and all(len(x) == 10 and np.array_equal(x, y) for x, y in zip(a, b))  # one unit per frame
    assert max(x.max() for x in a) < 10
    vals = list(np.linspace(0, 1, 101))
    assert percentile(vals, 0.9) == (pytest.approx(0.05), pytest.approx(0.95))


def test_bootstrap_fid_on_the_identity_resample_is_the_fid():
    rng = np.random.default_rng(0)
    g, r = rng.normal(size=(40, 4)), rng.normal(0.5, 1.0, size=(40, 4))

    class Ex:
        name, dims = "toy", 4

    full = fid_kid(g, r, Ex)
    boot = bootstrap_fid_kid(g, r, np.arange(40)[None])
    assert boot["fid"][0] == pytest.approx(full["fid"]) and boot["kid"][0] == pytest.approx(full["kid"])


def test_prdc_equals_the_reference_implementation_and_a_hand_case():
    from prdc import compute_prdc

    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(60, 8)).astype(np.float32), rng.normal(0.3, 1.2, size=(50, 8)).astype(np.float32)
    ours = prdc(fake, real, 5)
    ref = compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    assert ours == {k: pytest.approx(float(v)) for k, v in ref.items()}
    # by hand: real points 0, 1, 2 on a line (k = 1 radius: 1 each); fakes at 0.5 (inside) and 10 (outside)
    real1 = np.array([[0.0], [1.0], [2.0]])
    fake1 = np.array([[0.5], [10.0], [11.0]])
    hand = prdc(fake1, real1, 1)
    assert hand["precision"] == pytest.approx(1 / 3)  # one fake of three falls in a real ball
    assert hand["coverage"] == pytest.approx(2 / 3)  # real 0 and 1 have a fake within their ball; 2 does not
    assert hand["density"] == pytest.approx(2 / 3)  # 0.5 sits in two balls: 2 / (k * 3 fakes)
    with pytest.raises(ValueError, match="PRDC with k = 5 needs more than 5 images"):
        prdc(fake[:5], real, 5)


def test_semantic_bootstrap_from_per_image_confusions_reproduces_the_meter(prepared):
    from benchmark.engine.data import PreparedDataset

    test = PreparedDataset(prepared, "test")
    meter = SegmentationMeter(test.table)
    g = torch.Generator().manual_seed(0)
    labels = torch.stack([test[i]["labels"] for i in range(len(test))])
    noisy = torch.where(torch.rand(labels.shape, generator=g) < 0.3,
                        torch.randint(0, 13, labels.shape, generator=g), labels.clamp_max(12))
    meter.update(noisy[:5], labels[:5])
    meter.update(noisy[5:], labels[5:])
    scores = meter.compute()
    assert scores.per_image.shape == (len(test), 13, 13)
    miou, rare = miou_from_confusion(scores.per_image.sum(0), test.table.rare_ids)
    assert miou == pytest.approx(scores.miou, abs=1e-6)
    assert (rare is None and scores.rare_miou is None) or rare == pytest.approx(scores.rare_miou, abs=1e-6)
