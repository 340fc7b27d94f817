"""Metrics of generated segmentation maps: prompt adherence, realism, diversity; and the baseline
every generator is read against: a real training map with the prompt's class set, drawn at random.

- adherence (per prompt/map pair, then averaged): ``presence`` = share of the requested classes in
  the map; ``absence`` = share of the other classes left out; ``size`` / ``location`` / ``quantity``
  = share of the requested-and-present classes whose described field equals the requested one (only
  where the prompt specifies it); ``clause_accuracy`` = share of requested classes present with
  every specified field right; ``adherence`` = mean of the five shares.
- realism, against real maps: ``cooccurrence_l1`` = mean absolute difference between the two sets'
  class co-occurrence matrices (P(i and j present), diagonal = presence rate); ``area_w1`` = per
  class, the 1-D Wasserstein-1 distance between the area-share distributions of the maps holding
  it, averaged over classes both sets hold. Lower is more realistic; 0 = indistinguishable.
- diversity: mean pairwise pixel disagreement (share of pixels with different class ids) between
  maps generated for the same prompt; 0 = the generator ignores its noise.
"""
from __future__ import annotations

import itertools
import statistics

import numpy as np

from casdm.prompts import Prompt, Vocabulary, class_stats, describe_map

FIELDS = ("size", "location", "quantity")


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def adherence(prompts: list[Prompt], maps: list[np.ndarray], vocab: Vocabulary, rare: list[str] = ()) -> dict:
    if len(prompts) != len(maps):
        raise ValueError(f"{len(prompts)} prompts but {len(maps)} maps")
    shares: dict[str, list[float]] = {k: [] for k in ("presence", "absence", *FIELDS, "clause_accuracy")}
    per_class: dict[str, list[float]] = {}
    exact = []
    for prompt, m in zip(prompts, maps):
        got = {c.name: c for c in describe_map(m, vocab)}
        asked = {c.name: c for c in prompt}
        hits = [n in got for n in asked]
        shares["presence"].append(_mean([float(h) for h in hits]) if asked else 1.0)
        others = [n for n in vocab.names if n not in asked]
        if others:
            shares["absence"].append(_mean([float(n not in got) for n in others]))
        for name, c in asked.items():
            per_class.setdefault(name, []).append(float(name in got))
        for f in FIELDS:
            right = [float(getattr(got[n], f) == getattr(c, f)) for n, c in asked.items()
                     if n in got and getattr(c, f) is not None]
            if right:
                shares[f].append(_mean(right))
        if asked:
            shares["clause_accuracy"].append(_mean([
                float(n in got and all(getattr(c, f) in (None, getattr(got[n], f)) for f in FIELDS))
                for n, c in asked.items()]))
        exact.append(float(set(got) == set(asked)))
    out = {k: _mean(v) for k, v in shares.items()}
    parts = [out[k] for k in ("presence", "absence", *FIELDS) if out[k] is not None]
    out["adherence"] = _mean(parts)
    out["exact_class_set"] = _mean(exact)
    out["presence_per_class"] = {n: _mean(v) for n, v in sorted(per_class.items())}
    rare_hits = [h for n in rare for h in per_class.get(n, [])]
    out["rare_presence"] = _mean(rare_hits)
    out["pairs"] = len(maps)
    return out


def _profile(maps: list[np.ndarray], k: int, min_fraction: float) -> tuple[np.ndarray, list[list[float]]]:
    present = np.zeros((len(maps), k), dtype=bool)
    areas: list[list[float]] = [[] for _ in range(k)]
    for i, m in enumerate(maps):
        for c, s in class_stats(np.asarray(m), k, min_fraction).items():
            present[i, c] = True
            areas[c].append(s.area)
    return present, areas


def realism(maps: list[np.ndarray], reference: list[np.ndarray], vocab: Vocabulary) -> dict:
    """Class co-occurrence (L1) and per-class area-share (Wasserstein-1) distances to ``reference``."""
    from scipy.stats import wasserstein_distance

    if not maps or not reference:
        raise ValueError("realism needs generated and reference maps")
    k = len(vocab.names)
    p_gen, a_gen = _profile(maps, k, vocab.min_fraction)
    p_ref, a_ref = _profile(reference, k, vocab.min_fraction)
    co = lambda p: (p.T.astype(float) @ p.astype(float)) / len(p)
    iu = np.triu_indices(k)
    w1 = {vocab.names[c]: float(wasserstein_distance(a_gen[c], a_ref[c])) for c in range(k) if a_gen[c] and a_ref[c]}
    return {"cooccurrence_l1": float(np.abs(co(p_gen) - co(p_ref))[iu].mean()),
            "area_w1": _mean(list(w1.values())), "area_w1_per_class": w1,
            "classes_never_generated": [vocab.names[c] for c in range(k) if a_ref[c] and not a_gen[c]],
            "maps": len(maps), "reference_maps": len(reference)}


def diversity(groups: list[list[np.ndarray]]) -> float | None:
    """Mean over prompts of the mean pairwise pixel disagreement of that prompt's maps."""
    per_prompt = [_mean([float((a != b).mean()) for a, b in itertools.combinations(g, 2)]) for g in groups if len(g) > 1]
    return _mean([v for v in per_prompt if v is not None])


class RetrievalBaseline:
    """For a prompt, a random real map holding exactly its class set (else the most similar set by
    Jaccard index): what "generation" is worth without a generator."""

    def __init__(self, maps: list[np.ndarray], vocab: Vocabulary):
        self.maps, self.vocab = maps, vocab
        self.sets = [frozenset(class_stats(np.asarray(m), len(vocab.names), vocab.min_fraction)) for m in maps]

    def candidates(self, prompt: Prompt) -> list[int]:
        want = frozenset(self.vocab.class_id(c.name) for c in prompt)
        score = [len(want & s) / max(1, len(want | s)) for s in self.sets]
        best = max(score)
        return [i for i, v in enumerate(score) if v == best]

    def sample(self, prompt: Prompt, rng: np.random.Generator) -> np.ndarray:
        return self.maps[int(rng.choice(self.candidates(prompt)))]


def summary(prompts: list[Prompt], maps: list[np.ndarray], groups: list[list[np.ndarray]],
            reference: list[np.ndarray], vocab: Vocabulary, rare: list[str]) -> dict:
    """Everything above for one set of maps (a generator's or the baseline's)."""
    return {"adherence": adherence(prompts, maps, vocab, rare), "realism": realism(maps, reference, vocab),
            "diversity": diversity(groups)}
