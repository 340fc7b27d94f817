"""What the verdicts rest on: resampling by the unit of independence (a simulation with known clip
correlation), bias-corrected row intervals, Holm within families, the scope of a difference, the
positive control and every downstream comparison's minimum detectable effect."""
from __future__ import annotations

import statistics

import numpy as np
import pytest
from cleanfid.fid import frechet_distance

from benchmark.metrics.stats import bootstrap_indices, corrected_interval, holm, paired_bootstrap, paired_seeds
from benchmark.results import CONTROL, REAL, EvaluationRow
from benchmark.stages.comparisons import comparisons

pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")  # clean-fid's sqrtm call

CLIPS, FRAMES = 8, 20  # the default test split's shape: 4 videos x 2 clips x 20 consecutive frames


def fid(g: np.ndarray, r: np.ndarray) -> float:
    return float(frechet_distance(g.mean(0), np.cov(g, rowvar=False), r.mean(0), np.cov(r, rowvar=False)))


def fids(g: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``fid`` of each of a stack of feature sets ([n, N, d] against [n, N, d]) at once: the trace of the
    covariances' product's square root is the sum of the square roots of its eigenvalues (real and
    non-negative: a product of two covariance matrices). 40,000 small FIDs take a second this way; one
    clean-fid call each took ten (equal to 1e-9: ``test_the_stacked_fid_is_clean_fids``)."""
    mg, mr = g.mean(1), r.mean(1)
    cov = lambda x, m: np.einsum("nki,nkj->nij", x - m[:, None], x - m[:, None]) / (x.shape[1] - 1)
    cg, cr = cov(g, mg), cov(r, mr)
    root = np.sqrt(np.linalg.eigvals(cg @ cr).real.clip(min=0)).sum(1)
    return ((mg - mr) ** 2).sum(1) + np.trace(cg, axis1=1, axis2=2) + np.trace(cr, axis1=1, axis2=2) - 2 * root


def clustered(rng, d: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real test features and two identical generators' features: every clip has its own scene (a
    shared centre), each generator renders a whole clip with its own style error, frames add noise. The
    two generators are the same process, so the true difference of their FIDs is 0."""
    centre = rng.normal(0, 1.0, size=(CLIPS, d))
    frames = lambda: rng.normal(0, 0.5, size=(CLIPS * FRAMES, d))
    real = np.repeat(centre, FRAMES, 0) + frames()
    gen = lambda: np.repeat(centre + rng.normal(0, 0.7, size=(CLIPS, d)), FRAMES, 0) + frames()
    return real, gen(), gen()


def simulate(unit: str, sets: int = 200, resamples: int = 100) -> tuple[float, float]:
    """(share of data sets whose interval of FID(A) - FID(B) covers 0, share whose row interval holds
    the row's FID) when the resamples draw ``unit``s."""
    rng = np.random.default_rng(0)
    covered = held = 0
    for s in range(sets):
        real, a, b = clustered(rng)
        groups = [k if unit == "clip" else k * FRAMES + j for k in range(CLIPS) for j in range(FRAMES)]
        idx = np.stack(bootstrap_indices(groups, resamples, seed=s))
        fa, fb = list(fids(a[idx], real[idx])), list(fids(b[idx], real[idx]))
        point, point_b = fids(np.stack([a, b]), np.stack([real, real]))
        d = paired_bootstrap(fa, fb, point - point_b, "fid", 0.95, unit)
        covered += d.low <= 0 <= d.high
        low, high = corrected_interval(fa, point, positive=True)  # as the evaluate stage does for FID
        held += low <= point <= high
    return covered / sets, held / sets


def test_the_stacked_fid_is_clean_fids():
    rng = np.random.default_rng(1)
    real, a, b = clustered(rng)
    idx = np.stack(bootstrap_indices([k for k in range(CLIPS) for _ in range(FRAMES)], 5, seed=0))
    stacked = fids(np.concatenate([a[idx], b[idx]]), np.concatenate([real[idx], real[idx]]))
    one_by_one = [fid(x[i], real[i]) for x in (a, b) for i in idx]
    assert stacked == pytest.approx(one_by_one, rel=1e-9, abs=1e-9)


def test_clip_resampling_covers_two_identical_generators_where_frame_resampling_falls_short():
    clip_cover, clip_held = simulate("clip")
    frame_cover, _ = simulate("frame")
    assert 0.90 <= clip_cover <= 0.99, clip_cover  # measured: 0.965
    assert frame_cover < 0.90, frame_cover  # measured: 0.535: frames of one clip are not independent
    assert clip_held == 1.0  # the bias-corrected row interval always holds its point value


def test_a_resample_holds_whole_clips_and_is_shared():
    groups = ["a"] * 3 + ["b"] * 2 + ["c"] * 4
    first, again = bootstrap_indices(groups, 30, seed=1), bootstrap_indices(groups, 30, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    for idx in first:
        drawn = [groups[i] for i in idx]
        assert all(drawn.count(g) % groups.count(g) == 0 for g in set(drawn))  # never part of a clip
    # a biased statistic: the plain percentile interval can miss the point value, the corrected one cannot
    values = list(np.linspace(11.0, 14.0, 50))
    low, high = corrected_interval(values, 10.0)
    assert low <= 10.0 <= high and high - low == pytest.approx(np.percentile(values, 97.5) - np.percentile(values, 2.5))
    # a skewed, biased FID (few clips): a shift would cross 0, the scaled interval stays above it
    skewed = [12.0, 13.0, 14.0, 15.0, 60.0, 70.0]
    assert corrected_interval(skewed, 10.0)[0] < 0
    low, high = corrected_interval(skewed, 10.0, positive=True)
    assert 0 < low <= 10.0 <= high


def test_holm_matches_a_hand_computation():
    # sorted: 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.02, 0.3]) == pytest.approx([0.04, 0.3]) and holm([0.6, 0.7, 0.2]) == pytest.approx([1.0, 1.0, 0.6])  # never above 1


def row(name: str, role: str, per_seed: dict[int, float], training_seeds: list[int] | None) -> EvaluationRow:
    seeds = [{"seed": s, "miou": v, "mdice": v, "rare_miou": v / 2, "rare_mdice": v / 2} for s, v in per_seed.items()]
    vals = list(per_seed.values())
    return EvaluationRow.model_validate({
        "model": name, "role": role, "training_seeds": training_seeds,
        "downstream": {"per_seed": seeds, "miou": statistics.fmean(vals), "miou_std": statistics.stdev(vals)}})


def test_scope_family_holm_positive_control_and_detectable_effects():
    real = row(REAL, "reference", {0: 0.50, 1: 0.60, 2: 0.55}, None)
    control = row(CONTROL, "control", {0: 0.56, 1: 0.69, 2: 0.61}, None)
    one = row("casdm", "method", {0: 0.55, 1: 0.70, 2: 0.62}, [0])
    three = row("sdm", "baseline", {0: 0.40, 1: 0.58, 2: 0.50}, [0, 1, 2])
    found = comparisons({REAL: real, CONTROL: control, "casdm": one, "sdm": three},
                        {"casdm": "method", "sdm": "baseline"}, [], 0.95)
    by = {(c.a, c.b, c.metric): c for c in found}
    positive = by[(CONTROL, REAL, "downstream_miou")]  # the perfect generator against real only
    assert positive.kind == positive.family == "control vs real" and positive.scope == "data"
    assert by[("casdm", REAL, "downstream_miou")].scope == "weights"  # one training seed: these weights
    assert by[("sdm", REAL, "downstream_miou")].scope == "method"  # three training seeds pooled
    assert by[("casdm", "sdm", "downstream_miou")].scope == "weights"  # the weaker side decides
    downstream = [c for c in found if c.metric.startswith("downstream_")]
    assert downstream and all(c.mde is not None and c.mde > 0 for c in downstream)
    # the MDE is (t(0.975, 2) + t(0.8, 2)) x sd / sqrt(3) of the paired differences
    diffs = [0.06, 0.09, 0.06]
    assert positive.mde == pytest.approx((4.302653 + 1.060660) * statistics.stdev(diffs) / 3 ** 0.5, rel=1e-5)
    # within a family the verdict is read from the Holm-adjusted p, which is never below the raw p
    vs_real = [c for c in found if c.family == "vs real"]
    assert len(vs_real) == 4 and all(c.p_adjusted >= c.p for c in vs_real)
    expected = holm([c.p for c in vs_real])
    assert [c.p_adjusted for c in vs_real] == pytest.approx(expected)
    raw_only = paired_seeds(one.downstream.by_seed("miou"), real.downstream.by_seed("miou"), "miou")
    assert raw_only.verdict == "better" and raw_only.p < 0.05  # alone it passes ...
    assert by[("casdm", REAL, "downstream_miou")].verdict == ("better" if expected[0] < 0.05 else "indistinguishable")
