"""Replication over training seeds: a model's rows pooled over ``train.seeds``, comparisons tested over
seeds (scope ``method`` from three), the seed-to-seed spread shown beside one-seed differences, the seed
folders the leaderboard reads, and the seeds' checks in params."""
from __future__ import annotations

import json
import math
import statistics

import pytest
from scipy.stats import t

from benchmark.config import ConfigError
from benchmark.metrics.pooling import pool
from benchmark.metrics.stats import corrected_interval
from benchmark.results import CONTROL, REAL, EvaluationRow
from benchmark.seeds import seed_path
from benchmark.stages.comparisons import attach_seed_spread, comparisons
from benchmark.stages.leaderboard import load_rows
from tests.conftest import tiny_params

LEVEL = 0.95


def row(name: str, role: str, per_seed: dict[int, float], training_seed: int | None = None,
        fid: float | None = None, boot: list[float] | None = None) -> EvaluationRow:
    """A row with downstream mIoU per segmenter seed and, optionally, an FID with bootstrap resamples."""
    seeds = [{"seed": s, "miou": v, "mdice": v, "rare_miou": v / 2, "rare_mdice": v / 2} for s, v in per_seed.items()]
    vals = list(per_seed.values())
    data = {"model": name, "role": role, "training_seeds": None if training_seed is None else [training_seed],
            "downstream": {"seeds": list(per_seed), "per_seed": seeds, "miou": statistics.fmean(vals),
                           "miou_std": statistics.stdev(vals), "rare_miou": statistics.fmean(vals) / 2}}
    if fid is not None:
        data["quality"] = {"fid": fid, "kid": fid / 100, "extractor": "x", "bootstrap": {"fid": boot, "kid": [
            b / 100 for b in boot]}}
    return EvaluationRow.model_validate(data)


def boot_of(fid: float, shift: float) -> list[float]:
    """Ten resamples around ``fid`` (shared test-set noise pattern, so two rows' resamples are paired)."""
    return [fid + shift + d for d in (-2.0, -1.0, -0.5, 0.0, 0.3, 0.5, 1.0, 1.5, -1.5, 1.7)]


def three_seeds(name: str, role: str, gains: list[float], fids: list[float]) -> EvaluationRow:
    return pool([row(name, role, {0: 0.50 + g, 1: 0.60 + g, 2: 0.55 + g}, s, fid=f, boot=boot_of(f, 1.0))
                 for s, (g, f) in enumerate(zip(gains, fids))], LEVEL)


def test_a_model_pooled_over_three_seeds_is_compared_over_its_seeds():
    real = row(REAL, "reference", {0: 0.50, 1: 0.60, 2: 0.55}, fid=20.0, boot=boot_of(20.0, 1.0))
    control = row(CONTROL, "control", {0: 0.52, 1: 0.61, 2: 0.58})
    casdm = three_seeds("casdm", "method", [0.05, 0.02, 0.08], [40.0, 46.0, 43.0])
    sdm = three_seeds("sdm", "baseline", [0.01, 0.00, 0.03], [60.0, 58.0, 65.0])
    assert casdm.training_seeds == [0, 1, 2] and len(casdm.replicates) == 3
    assert casdm.downstream.miou == pytest.approx(0.55 + 0.05)  # the mean over seeds
    assert casdm.downstream.miou_std == pytest.approx(statistics.stdev([0.55 + g for g in (0.05, 0.02, 0.08)]))
    assert casdm.quality.fid == pytest.approx(43.0)
    found = comparisons({REAL: real, CONTROL: control, "casdm": casdm, "sdm": sdm},
                        {"casdm": "method", "sdm": "baseline"}, [], LEVEL)
    by = {(c.a, c.b, c.metric): c for c in found}

    gain = by[("casdm", REAL, "downstream_miou")]
    assert gain.scope == "method" and gain.method.startswith("t over training seeds") and gain.n == 3
    diffs = [0.05, 0.02, 0.08]  # each seed's mean over segmenter seeds minus real only's
    se = statistics.stdev(diffs) / math.sqrt(3)
    assert gain.delta == pytest.approx(0.05)
    assert gain.p == pytest.approx(2 * t.sf(0.05 / se, 2), rel=1e-6)
    assert gain.low == pytest.approx(0.05 - t.ppf(0.975, 2) * se)
    assert gain.seed_sd == pytest.approx(statistics.stdev(diffs)) and gain.seed_sd_from == "this run"
    # real only's own segmenter noise: one set of runs every training seed is compared with, so it joins
    # the standard error (per segmenter seed k, the seeds' mean difference: here 0.03, 0.07, 0.05)
    noisy = row(REAL, "reference", {0: 0.52, 1: 0.58, 2: 0.55})
    again = {(c.a, c.b, c.metric): c for c in comparisons({REAL: noisy, "casdm": casdm}, {"casdm": "method"}, [], LEVEL)}
    g = again[("casdm", REAL, "downstream_miou")]
    se_k = math.sqrt(statistics.variance(diffs) / 3 + statistics.variance([0.03, 0.07, 0.05]) / 3)
    assert g.delta == pytest.approx(0.05) and g.p == pytest.approx(2 * t.sf(0.05 / se_k, 2), rel=1e-6)
    assert g.p > gain.p and "segmenter seeds" in g.method

    # an image score: the seeds' spread and the test set's bootstrap spread, in quadrature
    fid = by[("casdm", "sdm", "fid")]
    seed_diffs = [40.0 - 60.0, 46.0 - 58.0, 43.0 - 65.0]
    boot_diff = [a - b for a, b in zip(casdm.quality.bootstrap["fid"], sdm.quality.bootstrap["fid"])]
    se = math.sqrt(statistics.variance(seed_diffs) / 3 + statistics.variance(boot_diff))
    assert fid.delta == pytest.approx(statistics.fmean(seed_diffs))
    assert fid.high - fid.delta == pytest.approx(t.ppf(0.975, 2) * se)
    assert fid.p == pytest.approx(2 * t.sf(abs(fid.delta) / se, 2), rel=1e-6) and fid.scope == "method"
    assert fid.p_adjusted >= fid.p and fid.verdict == ("better" if fid.p_adjusted < 0.05 else "indistinguishable")


def test_a_pooled_interval_holds_the_point_and_the_seeds_spread():
    seeds = [row("casdm", "method", {0: 0.5, 1: 0.6}, s, fid=f, boot=boot_of(f, 1.5)) for s, f in
             enumerate([30.0, 50.0, 40.0])]
    pooled = pool(seeds, LEVEL)
    low, high = pooled.quality.fid_low, pooled.quality.fid_high
    assert pooled.quality.fid == pytest.approx(40.0) and low < 40.0 < high
    test_only = corrected_interval(pooled.quality.bootstrap["fid"], 40.0, LEVEL, positive=True)
    assert low < test_only[0] and high > test_only[1]  # the seeds' spread widens it
    same = pool([row("casdm", "method", {0: 0.5, 1: 0.6}, s, fid=40.0, boot=boot_of(40.0, 1.5)) for s in range(3)],
                LEVEL)  # the control: identical seeds add nothing
    assert (same.quality.fid_low, same.quality.fid_high) == pytest.approx(test_only)


def test_one_seed_differences_carry_the_multi_seed_runs_spread():
    real = row(REAL, "reference", {0: 0.50, 1: 0.60, 2: 0.55})
    one = row("casdm", "method", {0: 0.56, 1: 0.66, 2: 0.62}, 0)
    found = comparisons({REAL: real, "casdm": one}, {"casdm": "method"}, [], LEVEL)
    (gain,) = [c for c in found if c.metric == "downstream_miou"]
    assert gain.scope == "weights" and gain.seed_sd is None  # one seed: no spread of its own
    reference = comparisons({REAL: real, "casdm": three_seeds("casdm", "method", [0.05, 0.02, 0.08],
                                                              [40.0, 46.0, 43.0])}, {"casdm": "method"}, [], LEVEL)
    attach_seed_spread(found, reference, "cpu-seeds")
    assert gain.seed_sd == pytest.approx(statistics.stdev([0.05, 0.02, 0.08])) and gain.seed_sd_from == "cpu-seeds"


def test_the_leaderboard_reads_and_pools_every_seed_and_names_a_missing_one(tmp_path):
    params = tiny_params(train={"seeds": [0, 1]}, models={})
    for name, r in ((REAL, row(REAL, "reference", {0: 0.5, 1: 0.6})), (CONTROL, row(CONTROL, "control", {0: 0.5, 1: 0.6}))):
        (tmp_path / f"{name}.json").write_text(json.dumps(r.to_json()))
    (tmp_path / "maps.json").write_text(json.dumps(row("casdm+maps", "generated", {0: 0.5, 1: 0.6}).to_json()))
    for name in params.models:
        f = seed_path(tmp_path, name, 0, ".json")
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps(row(name, "method", {0: 0.5, 1: 0.7}, 0).to_json()))
    first = next(iter(params.models))
    with pytest.raises(FileNotFoundError, match=rf"{first}/seed1\.json: missing; run `dvc repro evaluate@{first}-1`"):
        load_rows(tmp_path, params)
    for name in params.models:
        seed_path(tmp_path, name, 1, ".json").write_text(json.dumps(row(name, "method", {0: 0.7, 1: 0.9}, 1).to_json()))
    rows = load_rows(tmp_path, params)
    assert rows[first].training_seeds == [0, 1] and rows[first].downstream.miou == pytest.approx(0.7)


def test_seeds_are_distinct_and_a_runs_seed_is_one_of_them():
    assert tiny_params(train={"seeds": [3, 1]}).train.seed == 3  # unset: the first
    with pytest.raises(ConfigError, match="listed twice"):
        tiny_params(train={"seeds": [0, 0]})
    with pytest.raises(ConfigError, match="seed 5 is not one of train.seeds"):
        tiny_params(train={"seeds": [0, 1], "seed": 5})
    p = tiny_params(train={"seeds": [0, 1]})
    from benchmark.kinds.registry import training_config
    from benchmark.provenance import hash_json

    more = tiny_params(train={"seeds": [0, 1, 2]})
    assert hash_json(training_config(p, "casdm")) == hash_json(training_config(more, "casdm"))  # another seed: same run
    other = p.model_copy(update={"train": p.train.model_copy(update={"seed": 1})})
    assert hash_json(training_config(p, "casdm")) != hash_json(training_config(other, "casdm"))
