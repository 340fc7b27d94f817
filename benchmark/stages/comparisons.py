"""Every comparison the leaderboard shows, each with a 95 % interval and a verdict (``metrics/stats.py``).

- each row against real only and against the size-matched control (downstream, paired by seed);
- the method against each ablation and each baseline, and every step of the ablation ladder
  (MSE -> CA-MSE -> CA-MSE + CA-SP) against the step before: downstream (paired by seed) and image
  scores (FID, KID, semantic mIoU: paired bootstrap over the same test-map resamples).

A model trained with several seeds is compared over its seeds (``stats.over_training_seeds``); a
one-seed comparison carries the seed-to-seed spread (``seed_sd``) a multi-seed run measured of the same
pair and score (``leaderboard.seed_spread``), so a reader sees whether one difference is larger than
what another training seed gives.

A row that beats real only but not the control, when the control itself beats real only, owes its gain
to re-showing the selected (rare-first) training frames: such comparisons carry the note ``selection
effect``; when the control's gain is not detectable they are ``not attributable``.
"""
from __future__ import annotations

import statistics

from benchmark.metrics.stats import (
    BETTER,
    decide,
    higher_is_better,
    holm,
    over_training_seeds,
    paired_bootstrap,
    paired_seeds,
)
from benchmark.results import CONTROL, REAL, Comparison, EvaluationRow
DOWNSTREAM = ("miou", "rare_miou")  # the downstream scores compared (per seed)
IMAGE = ("fid", "kid", "semantic_miou", "semantic_rare_miou")  # the image scores compared (bootstrap)
METHOD_SEEDS = 3  # training seeds a row must pool before a difference is called a method's


def image_score(row: EvaluationRow, metric: str) -> tuple[float | None, list]:
    """(value on all test maps, values on the resamples) of an image score; (None, []) when the row has none."""
    block = row.semantic if metric.startswith("semantic_") else row.quality
    key = metric.removeprefix("semantic_")
    if block is None:
        return None, []
    return getattr(block, key), block.bootstrap.get(key, [])


def replicates(row: EvaluationRow) -> dict[int, EvaluationRow]:
    """A row pooled over >= 2 training seeds: its seeds' rows by seed; else {} (one seed, or a reference)."""
    return {r.training_seeds[0]: r for r in row.replicates} if len(row.replicates) >= 2 else {}


def minus(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def compare_seeds(a: str, b: str, rows: dict[str, EvaluationRow], level: float, image: bool,
                  kind: str) -> list[Comparison]:
    """A against B over training seeds: per seed the difference, tested with ``over_training_seeds``."""
    ra, rb = replicates(rows[a]), replicates(rows[b])
    seeds = sorted(set(ra) & set(rb)) if ra and rb else sorted(ra or rb)
    at = lambda reps, name, s: reps[s] if reps else rows[name]  # a one-row side is the same for every seed
    out = []
    for m in DOWNSTREAM:
        diffs = [minus(getattr(at(ra, a, s).downstream, m), getattr(at(rb, b, s).downstream, m)) for s in seeds]
        # per segmenter seed k, the mean over training seeds of A(s, k) - B(s, k): the segmenters' own noise
        by_k = [(at(ra, a, s).downstream.by_seed(m), at(rb, b, s).downstream.by_seed(m)) for s in seeds]
        ks = sorted(set.intersection(*(set(x) & set(y) for x, y in by_k))) if by_k else []
        per_k = [statistics.fmean(x[k] - y[k] for x, y in by_k) if all(x[k] is not None and y[k] is not None
                                                                       for x, y in by_k) else None for k in ks]
        r = over_training_seeds(diffs, m, level, segmenter=per_k)
        if r is not None:
            out.append(Comparison.of(a, b, f"downstream_{m}", kind, r))
    for m in IMAGE if image else ():
        if not m.startswith("semantic") and rows[a].quality and rows[b].quality \
                and rows[a].quality.extractor != rows[b].quality.extractor:
            continue
        diffs = [minus(image_score(at(ra, a, s), m)[0], image_score(at(rb, b, s), m)[0]) for s in seeds]
        (_, boot_a), (_, boot_b) = image_score(rows[a], m), image_score(rows[b], m)
        boot = [minus(x, y) for x, y in zip(boot_a, boot_b)] if len(boot_a) == len(boot_b) else []
        r = over_training_seeds(diffs, m, level, boot)
        if r is not None:
            out.append(Comparison.of(a, b, m, kind, r))
    return out


def compare(a: str, b: str, rows: dict[str, EvaluationRow], level: float, image: bool, kind: str,
            unit: str = "clip") -> list[Comparison]:
    """A against B on the downstream scores (and, with ``image``, the image scores): over training seeds
    when either row pools several, else paired by segmenter seed and by the shared test-set resamples."""
    if replicates(rows[a]) or replicates(rows[b]):
        found = compare_seeds(a, b, rows, level, image, kind)
        for c in found:
            c.seed_sd_from = "this run"
        return found
    out = []
    for m in DOWNSTREAM:
        r = paired_seeds(rows[a].downstream.by_seed(m), rows[b].downstream.by_seed(m), m, level)
        if r is not None:
            out.append(Comparison.of(a, b, f"downstream_{m}", kind, r))
    for m in IMAGE if image else ():
        (pa, ra), (pb, rb) = image_score(rows[a], m), image_score(rows[b], m)
        extractor = lambda name: rows[name].quality and rows[name].quality.extractor
        same_features = m.startswith("semantic") or extractor(a) == extractor(b)  # FIDs of two extractors: no pair
        r = paired_bootstrap(ra, rb, None if pa is None or pb is None else pa - pb, m, level, unit) if same_features else None
        if r is not None:
            out.append(Comparison.of(a, b, m, kind, r))
    return out


def scope_of(a: str, b: str, rows: dict[str, EvaluationRow]) -> str:
    """``method`` when every trained row of the pair pools >= 3 training seeds, ``weights`` when one
    does not (the difference is between these trained weights, not between methods), ``data`` when
    neither row comes from a trained model (the control against real only)."""
    seeds = [rows[n].training_seeds for n in (a, b) if n not in (REAL, CONTROL)]
    if not seeds:
        return "data"
    return "method" if all(s is not None and len(s) >= METHOD_SEEDS for s in seeds) else "weights"


def adjust(found: list[Comparison], level: float) -> None:
    """Holm-adjust each family's p-values and read every verdict from the adjusted test."""
    for family in dict.fromkeys(c.family for c in found):
        members = [c for c in found if c.family == family]
        for c, p in zip(members, holm([c.p for c in members])):
            c.p_adjusted = p
            c.verdict = decide(c.delta, p, 1 - level, higher_is_better(c.metric))


def comparisons(rows: dict[str, EvaluationRow], roles: dict[str, str], ladder: list[str], level: float,
                unit: str = "clip") -> list[Comparison]:
    """Every comparison, in reading order: the control vs real only (the positive control: real images
    of the same maps, a perfect generator), rows vs references, the method vs the others, the ladder;
    each family Holm-adjusted."""
    out = []
    if REAL in rows and CONTROL in rows:
        out += compare(CONTROL, REAL, rows, level, image=False, kind="control vs real", unit=unit)
    for name in rows:
        for ref in (REAL, CONTROL):
            if name not in (REAL, CONTROL) and ref in rows:
                out += compare(name, ref, rows, level, image=False, kind=f"vs {ref}", unit=unit)
    methods = [n for n, r in roles.items() if r == "method" and n in rows]
    for method in methods:
        for other in (n for n, r in roles.items() if r in ("ablation", "baseline") and n in rows):
            out += compare(method, other, rows, level, image=True, kind=f"method vs {roles[other]}", unit=unit)
    for lower, upper in zip(ladder, ladder[1:]):
        if lower in rows and upper in rows:
            out += compare(upper, lower, rows, level, image=True, kind="ladder step", unit=unit)
    for c in out:
        c.scope = scope_of(c.a, c.b, rows)
    adjust(out, level)
    flag_selection_effects(out)
    return out


def attach_seed_spread(found: list[Comparison], reference: list[Comparison], source: str) -> None:
    """Beside each comparison that has no spread of its own (one training seed), the seed-to-seed sd a
    multi-seed run measured of the same pair and score."""
    measured = {(c.a, c.b, c.metric): c.seed_sd for c in reference if c.seed_sd is not None}
    for c in found:
        if c.seed_sd is None and (c.a, c.b, c.metric) in measured:
            c.seed_sd, c.seed_sd_from = measured[(c.a, c.b, c.metric)], source


def flag_selection_effects(found: list[Comparison]) -> None:
    """A gain over real only that the control matches: a selection effect only when the control's own
    gain over real only was detected; otherwise the data cannot say where the gain comes from."""
    by = {(c.a, c.b, c.metric): c for c in found}
    for c in found:
        if c.b == REAL and c.a != CONTROL and c.verdict == BETTER:
            control = by.get((c.a, CONTROL, c.metric))
            if control is not None and control.verdict != BETTER:
                positive = by.get((CONTROL, REAL, c.metric))
                c.note = control.note = (
                    "selection effect: the size-matched control gains as much (control vs real: better)"
                    if positive is not None and positive.verdict == BETTER else
                    "not attributable: no better than the control, and the control's own gain over real only "
                    "is not detectable")
