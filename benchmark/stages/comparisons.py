"""Every comparison the leaderboard shows, each with a 95 % interval and a verdict (``metrics/stats.py``).

- each row against real only and against the size-matched control (downstream, paired by seed);
- the method against each ablation and each baseline, and every step of the ablation ladder
  (MSE -> CA-MSE -> CA-MSE + CA-SP) against the step before: downstream (paired by seed) and image
  scores (FID, KID, semantic mIoU: paired bootstrap over the same test-map resamples).

A row that beats real only but not the control owes its gain to re-showing the selected (rare-first)
training frames, not to synthesis: such comparisons carry the note ``selection effect``.
"""
from __future__ import annotations

from benchmark.metrics.stats import BETTER, decide, higher_is_better, holm, paired_bootstrap, paired_seeds
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


def compare(a: str, b: str, rows: dict[str, EvaluationRow], level: float, image: bool, kind: str,
            unit: str = "clip") -> list[Comparison]:
    """A against B on the downstream scores (and, with ``image``, the image scores)."""
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
