"""Intervals, tests and verdicts: every comparison the leaderboard shows carries a 95 % interval, a
p-value (raw and Holm-adjusted within its family), the smallest effect it could have seen, and one word.

- Downstream scores are paired by seed (the same segmenter seeds train every row): the interval is
  Student's t interval of the mean per-seed difference, mean +- t(level, n - 1) * sd / sqrt(n), the
  test the paired t test, the minimum detectable effect (80 % power, two-sided at 1 - level)
  (t(1 - alpha/2, n - 1) + t(power, n - 1)) * sd / sqrt(n) at the observed sd.
- Image scores (FID, KID, semantic mIoU) are bootstrapped over the test set by its unit of
  independence (``evaluate.bootstrap.unit``: whole clips, or videos, drawn with replacement; frames of
  one clip are near copies of one another, so drawing frames as if independent makes every interval
  too narrow). One set of resamples serves every model, so a difference is computed resample by
  resample and stays paired. FID on a resample is biased upwards (a resample holds fewer distinct
  images: a noisier covariance), so intervals are bias-corrected: the percentile interval shifted by
  (mean of the resamples - the point value), which keeps the point value inside it; the p-value is a
  normal test of the point difference against the resamples' standard deviation (no floor at
  1 / resamples), the minimum detectable effect the same standard deviation's.

- A model trained with several seeds (``train.seeds``) is compared over its training seeds: per seed,
  the difference d_s (downstream: the mean over segmenter seeds; image scores: on all test images),
  and a t test of their mean whose standard error holds the seeds' spread (sd(d) / sqrt(S)) and, added
  in quadrature, for image scores the test set's (the standard deviation of the seed-mean difference
  over the shared bootstrap resamples), for downstream scores the segmenters' (the variance over
  segmenter seeds of the seed-mean difference, / K: a reference row is one set of segmenter runs that
  every training seed is compared with, so its noise is not in the seeds' spread); degrees of freedom
  min(S, K) - 1 downstream, S - 1 for image scores. A difference between methods must be larger than
  what another training seed, other test clips and other segmenter seeds would give. Two seeds of a
  model pair by seed value (seed s of A against seed s of B).

Verdict: ``better`` or ``worse`` when the Holm-adjusted p of the comparison's family is below
1 - level (the interval is the unadjusted one), else ``indistinguishable`` (at this budget: more seeds,
clips or images may separate them). With one seed there is no interval and no test.
"""
from __future__ import annotations

import math
import statistics

import numpy as np

from benchmark.results import Difference

BETTER, WORSE, SAME = "better", "worse", "indistinguishable"
POWER = 0.8  # the power at which a minimum detectable effect is stated
HIGHER_IS_BETTER = {"fid": False, "kid": False, "colour_shift": False}  # every other score: higher is better


def higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER.get(metric.split(":")[0].removeprefix("delta_"), True)


def decide(delta: float, p: float | None, alpha: float, higher_better: bool = True) -> str:
    """The word for a difference (A - B) and its (adjusted) p-value: does A beat B?"""
    if p is None or p >= alpha:
        return SAME
    return BETTER if (delta > 0) == higher_better else WORSE


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family's p-values (None: no test; it takes no part)."""
    order = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running, m = 0.0, len(order)
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of paired differences; no interval from fewer than two."""
    from scipy.stats import t

    if not diffs:
        return None, None, None
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    half = t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def t_test(diffs: list[float], level: float = 0.95, power: float = POWER) -> tuple[float | None, float | None]:
    """(two-sided p of the paired t test, minimum detectable effect) of paired differences."""
    from scipy.stats import t

    n = len(diffs)
    if n < 2:
        return None, None
    se = statistics.stdev(diffs) / math.sqrt(n)
    mde = (t.ppf(0.5 + level / 2, n - 1) + t.ppf(power, n - 1)) * se
    if se == 0:
        return (1.0 if statistics.fmean(diffs) == 0 else 0.0), mde
    return float(2 * t.sf(abs(statistics.fmean(diffs)) / se, n - 1)), float(mde)


def paired_seeds(ours: dict, theirs: dict, metric: str, level: float = 0.95) -> Difference | None:
    """A - B over the seeds both have (``{seed: value}``); None when a seed's score is absent."""
    common = sorted(set(ours) & set(theirs))
    if not common or any(ours[s] is None or theirs[s] is None for s in common):
        return None
    diffs = [ours[s] - theirs[s] for s in common]
    mean, low, high = t_interval(diffs, level)
    p, mde = t_test(diffs, level)
    return Difference(delta=mean, low=low, high=high, n=len(common), method="paired t over seeds", p=p, mde=mde,
                      verdict=decide(mean, p, 1 - level, higher_is_better(metric)))


def bootstrap_indices(groups: list, resamples: int, seed: int) -> list[np.ndarray]:
    """Resamples of the test images by their unit of independence: ``groups[i]`` names image i's unit
    (its clip, its video, or the image itself); each resample draws as many units as there are, with
    replacement, and holds every image of each drawn unit. Seeded: the same for every model."""
    units: dict = {}
    for i, g in enumerate(groups):
        units.setdefault(g, []).append(i)
    members = [np.array(v) for v in units.values()]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[k] for k in rng.integers(0, len(members), size=len(members))])
            for _ in range(resamples)]


def percentile(values: list[float | None], level: float = 0.95) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < 2:
        return None, None
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def centred(values: list[float | None], point: float | None) -> list[float]:
    """The finite resample values shifted so that their mean is the point value (the bias correction)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if point is None or not vals:
        return vals
    shift = statistics.fmean(vals) - point
    return [v - shift for v in vals]


def corrected_interval(values: list[float | None], point: float | None, level: float = 0.95,
                       positive: bool = False) -> tuple[float | None, float | None]:
    """The bias-corrected percentile interval of one row's score (it holds the point value). For a
    score that cannot go below 0 (FID) the correction scales rather than shifts (the percentiles times
    point / mean of the resamples): a shift moved the tiny profile's real-row FID interval below 0."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if positive and vals and point is not None and point > 0 and min(vals) > 0:
        ratio = point / statistics.fmean(vals)
        low, high = percentile(vals, level)
        return (None, None) if low is None else (low * ratio, high * ratio)
    return percentile(centred(values, point), level)


def bootstrap_test(values: list[float], point: float, level: float = 0.95,
                   power: float = POWER) -> tuple[float | None, float | None]:
    """(two-sided p, minimum detectable effect) of a difference from its resample values: a normal
    (Wald) test of the point difference against the resamples' standard deviation, and the effect
    (z(1 - alpha/2) + z(power)) * that sd. Why not the share of resamples beyond 0: with B resamples it
    cannot go below 1 / (B + 1), and after Holm in a family of 12 tests 200 resamples could never give
    a verdict (12 / 201 = 0.06), however far apart two rows are."""
    from scipy.stats import norm

    if len(values) < 2:
        return None, None
    sd = float(np.std(values, ddof=1))
    if sd == 0:
        return (1.0 if point == 0 else 0.0), 0.0
    p = float(2 * norm.sf(abs(point) / sd))
    return p, float((norm.ppf(0.5 + level / 2) + norm.ppf(power)) * sd)


def paired_bootstrap(ours: list, theirs: list, point: float | None, metric: str,
                     level: float = 0.95, unit: str = "clip") -> Difference | None:
    """A - B from two models' values on the same resamples; ``point`` is the difference on all images."""
    if point is None or not ours or len(ours) != len(theirs):
        return None
    diffs = centred([a - b if a is not None and b is not None else None for a, b in zip(ours, theirs)], point)
    low, high = percentile(diffs, level)
    p, mde = bootstrap_test(diffs, point, level)
    return Difference(delta=point, low=low, high=high, n=len(ours), method=f"paired bootstrap over test {unit}s",
                      p=p, mde=mde, verdict=decide(point, p, 1 - level, higher_is_better(metric)))


def seed_half_width(values: list[float | None], level: float = 0.95) -> float | None:
    """Student's t half-width of the mean of per-seed values (None: fewer than two)."""
    from scipy.stats import t

    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    return float(t.ppf(0.5 + level / 2, len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals)))


def over_training_seeds(diffs: list[float], metric: str, level: float = 0.95, boot: list | None = None,
                        segmenter: list | None = None, power: float = POWER) -> Difference | None:
    """A - B from per-training-seed differences ``diffs`` (>= 2). The standard error adds, in quadrature,
    what the seeds' spread cannot hold: ``boot``, the seed-mean difference on each shared bootstrap
    resample (image scores: the test set's noise); ``segmenter``, the seed-mean difference per segmenter
    seed (downstream: the segmenters' noise, var / K; a reference row such as real only is one set of
    segmenter runs shared by every training seed, so its noise never shows in the seeds' spread).
    Degrees of freedom: the fewer of training and segmenter seeds, minus one."""
    from scipy.stats import t

    n = len(diffs)
    if n < 2 or any(d is None for d in diffs):
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    var, df, parts = sd ** 2 / n, n - 1, ["t over training seeds"]
    vals = [b for b in (boot or []) if b is not None and math.isfinite(b)]
    if len(vals) >= 2:
        var += float(np.var(vals, ddof=1))
        parts.append("test-set bootstrap")
    segs = [v for v in (segmenter or []) if v is not None]
    if len(segs) >= 2:
        var += statistics.variance(segs) / len(segs)
        df = min(df, len(segs) - 1)
        parts.append("segmenter seeds")
    se = math.sqrt(var)
    crit = t.ppf(0.5 + level / 2, df)
    mde = float((crit + t.ppf(power, df)) * se)
    p = (1.0 if mean == 0 else 0.0) if se == 0 else float(2 * t.sf(abs(mean) / se, df))
    return Difference(delta=mean, low=mean - crit * se, high=mean + crit * se, n=n, method=" + ".join(parts), p=p,
                      mde=mde, seed_sd=sd, verdict=decide(mean, p, 1 - level, higher_is_better(metric)))
