"""Intervals and verdicts: every comparison the leaderboard shows carries a 95 % interval and one word.

- Downstream scores are paired by seed (the same segmenter seeds train every row): the interval is
  Student's t interval of the mean per-seed difference, mean +- t(level, n - 1) * sd / sqrt(n).
- Image scores (FID, KID, semantic mIoU) are bootstrapped over the test images: one set of resamples
  (test-map indices drawn with replacement, seeded) serves every model, so a difference between two
  models is computed resample by resample and its percentile interval is paired too.

Verdict: ``better`` or ``worse`` when the interval of the difference excludes 0, else
``indistinguishable`` (at this budget: more seeds or images may separate them). With one seed there is
no interval and the verdict is ``indistinguishable``.
"""
from __future__ import annotations

import math
import statistics

import numpy as np

from benchmark.results import Difference

BETTER, WORSE, SAME = "better", "worse", "indistinguishable"
HIGHER_IS_BETTER = {"fid": False, "kid": False, "colour_shift": False}  # every other score: higher is better


def higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER.get(metric.split(":")[0].removeprefix("delta_"), True)


def verdict(low: float | None, high: float | None, higher_better: bool = True) -> str:
    """The word for an interval of a difference (A - B): does A beat B?"""
    if low is None or high is None or low <= 0 <= high:
        return SAME
    return BETTER if (low > 0) == higher_better else WORSE


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


def paired_seeds(ours: dict, theirs: dict, metric: str, level: float = 0.95) -> Difference | None:
    """A - B over the seeds both have (``{seed: value}``); None when a seed's score is absent."""
    common = sorted(set(ours) & set(theirs))
    if not common or any(ours[s] is None or theirs[s] is None for s in common):
        return None
    mean, low, high = t_interval([ours[s] - theirs[s] for s in common], level)
    return Difference(delta=mean, low=low, high=high, n=len(common), method="paired t over seeds",
                      verdict=verdict(low, high, higher_is_better(metric)))


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] indices into the test images, drawn with replacement: the same for every model."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile(values: list[float | None], level: float = 0.95) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < 2:
        return None, None
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_bootstrap(ours: list, theirs: list, point: float | None, metric: str,
                     level: float = 0.95) -> Difference | None:
    """A - B from two models' values on the same resamples; ``point`` is the difference on all images."""
    if point is None or not ours or len(ours) != len(theirs):
        return None
    low, high = percentile([a - b if a is not None and b is not None else None for a, b in zip(ours, theirs)],
                           level)
    return Difference(delta=point, low=low, high=high, n=len(ours), method="paired bootstrap over test images",
                      verdict=verdict(low, high, higher_is_better(metric)))
