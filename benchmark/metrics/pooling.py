"""One model's rows over its training seeds pooled into the leaderboard's row.

A model trained with several seeds (``train.seeds``) has one ``metrics/evaluate/<model>/seed<N>.json``
per seed. Its leaderboard row is the mean over seeds of every score; its bootstrap resamples are the
mean over seeds resample by resample (every seed's evaluation draws the same test clips, so the pooled
resamples stay paired with every other row's). A pooled score's interval holds both sources of noise:
the test set's (the bias-corrected bootstrap interval of the pooled resamples) and the training seeds'
(Student's t half-width of the seeds' mean), added in quadrature on each side. The per-seed rows stay
on the pooled row (``replicates``): comparisons test differences over training seeds from them
(``metrics/stats.py``).
"""
from __future__ import annotations

import math
import statistics

from benchmark.metrics.stats import corrected_interval, seed_half_width
from benchmark.results import Downstream, EvaluationRow, Quality, Semantic

DOWNSTREAM_SCALARS = ("miou", "mdice", "rare_miou", "rare_mdice")


def mean_or_none(values: list) -> float | None:
    """The mean; None when any value is missing (a score one seed could not compute is not averaged away)."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values)


def sd_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.stdev(vals) if len(vals) >= 2 else None


def mean_resamples(series: list[list]) -> list:
    """Resample b of the pool: the mean of every seed's resample b (None where a seed has none)."""
    if not series or any(len(s) != len(series[0]) for s in series):
        return []
    return [mean_or_none(list(vals)) for vals in zip(*series)]


def interval(point: float | None, resamples: list, per_seed: list, level: float,
             positive: bool = False) -> tuple[float | None, float | None]:
    """The pooled score's interval: test-set and training-seed noise added in quadrature per side."""
    low, high = corrected_interval(resamples, point, level, positive)
    if point is None or low is None:
        return low, high
    seeds = seed_half_width(per_seed, level) or 0.0
    low = point - math.hypot(point - low, seeds)
    high = point + math.hypot(high - point, seeds)
    return (max(low, 0.0) if positive else low), high


def pool_quality(qs: list[Quality], level: float) -> Quality:
    first = qs[0]
    boot = {k: mean_resamples([q.bootstrap.get(k, []) for q in qs]) for k in first.bootstrap}
    out = {"fid": statistics.fmean(q.fid for q in qs), "kid": statistics.fmean(q.kid for q in qs)}
    for m in ("fid", "kid"):
        out[f"{m}_low"], out[f"{m}_high"] = interval(out[m], boot.get(m, []), [getattr(q, m) for q in qs], level,
                                                     positive=m == "fid")
    prdc = {k: statistics.fmean(q.prdc[k] for q in qs) for k in first.prdc if all(k in q.prdc for q in qs)}
    colour = None
    if all(q.colour for q in qs):
        colour = {k: mean_or_none([q.colour.get(k) for q in qs]) for k, v in first.colour.items()
                  if isinstance(v, (int, float))}
    return Quality(extractor=first.extractor, images_generated=first.images_generated, images_real=first.images_real,
                   prdc=prdc, bootstrap=boot, colour=colour, **out)


def pool_semantic(ss: list[Semantic], level: float) -> Semantic:
    first = ss[0]
    out = {m: mean_or_none([getattr(s, m) for s in ss]) for m in ("miou", "mdice", "rare_miou", "rare_mdice")}
    boot = {k: mean_resamples([s.bootstrap.get(k, []) for s in ss]) for k in first.bootstrap}
    for m in ("miou", "rare_miou"):
        out[f"{m}_low"], out[f"{m}_high"] = interval(out[m], boot.get(m, []), [getattr(s, m) for s in ss], level)
    per_class = lambda field: {c: mean_or_none([getattr(s, field).get(c) for s in ss]) for c in getattr(first, field)}
    absent = [c for c in first.absent if all(c in s.absent for s in ss)]
    return Semantic(iou=per_class("iou"), dice=per_class("dice"), absent=absent, bootstrap=boot, **out)


def pool_downstream(ds: list[Downstream]) -> Downstream:
    """Scores: the mean over every (training seed, segmenter seed) run; ``*_std``: the spread of the
    training seeds' means (what a reader needs to see beside a difference between models);
    ``per_seed``: per segmenter seed, the mean over training seeds."""
    first = ds[0]
    per_seed = []
    for k, entry in enumerate(first.per_seed):
        runs = [d.per_seed[k] for d in ds if k < len(d.per_seed) and d.per_seed[k]["seed"] == entry["seed"]]
        pooled = {m: mean_or_none([r.get(m) for r in runs]) for m in DOWNSTREAM_SCALARS if m in entry}
        for field in ("iou", "dice"):
            if isinstance(entry.get(field), dict):
                pooled[field] = {c: mean_or_none([(r.get(field) or {}).get(c) for r in runs]) for c in entry[field]}
        per_seed.append({**entry, **pooled})
    out: dict = {}
    for m in DOWNSTREAM_SCALARS:
        out[m] = mean_or_none([getattr(d, m) for d in ds])
        out[f"{m}_std"] = sd_or_none([getattr(d, m) for d in ds])
    per_class = {}
    for cls, scores in first.per_class.items():
        cell = {}
        for k in scores:
            if not k.endswith("_std"):
                vals = [(d.per_class.get(cls) or {}).get(k) for d in ds]
                cell[k], cell[f"{k}_std"] = mean_or_none(vals), sd_or_none(vals)
        per_class[cls] = cell
    absent = [c for c in first.absent if all(c in d.absent for d in ds)]
    return Downstream(segmenters=first.segmenters, seeds=first.seeds, per_seed=per_seed, per_class=per_class,
                      absent=absent, runs=[r for d in ds for r in d.runs], segmenter_labels=first.segmenter_labels,
                      **out)


def pool(rows: list[EvaluationRow], level: float) -> EvaluationRow:
    """One model's row over its training seeds (one row: itself, unchanged)."""
    if len(rows) == 1:
        return rows[0]
    first = rows[0]
    fields = {k: getattr(first, k) for k in ("model", "role", "rare_classes", "train_images", "judge", "maps",
                                             "text_encoder") if k in first.model_fields_set}
    pooled = EvaluationRow(
        **fields, downstream=pool_downstream([r.downstream for r in rows]),
        training_seeds=[s for r in rows for s in (r.training_seeds or [])],
        seconds=sum(r.seconds or 0.0 for r in rows), training=first.training, replicates=rows)
    if all(r.quality for r in rows):
        pooled.quality = pool_quality([r.quality for r in rows], level)
    if all(r.semantic for r in rows):
        pooled.semantic = pool_semantic([r.semantic for r in rows], level)
    return pooled
