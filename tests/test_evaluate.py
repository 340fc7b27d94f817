"""Evaluation and leaderboard: seed aggregation, paired deltas, extractor-named columns, absent
classes, training-map selection, the small-layer feature extractors and their config checks."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from benchmark.config import ConfigError
from benchmark.results import CONTROL, REAL
from benchmark.stages.comparisons import comparisons
from benchmark.metrics.downstream import aggregate
from benchmark.stages.leaderboard import build, flat_table, load_rows, prdc_withheld, sort_rows
from benchmark.report.tables import markdown
from benchmark.results import EvaluationRow, LeaderboardRow, columns_of
from tests.conftest import tiny_params

NAMES = ["bg", "organ", "duct", "vein"]


def run(seg, seed, miou, rare, organ, duct):
    """One segmenter run: 'vein' is absent from the test split (None), as SegScores reports it."""
    return {"segmenter": seg, "seed": seed, "miou": miou, "mdice": miou + 0.1, "rare_miou": rare,
            "rare_mdice": rare, "iou": {"bg": 0.9, "organ": organ, "duct": duct, "vein": None},
            "dice": {"bg": 0.95, "organ": organ, "duct": duct, "vein": None}}


def test_aggregate_averages_segmenters_per_seed_then_spreads_over_seeds():
    runs = [run("segformer", 0, 0.5, 0.1, 0.4, 0.1), run("unet", 0, 0.7, 0.3, 0.6, 0.3),
            run("segformer", 1, 0.4, 0.2, 0.3, 0.2), run("unet", 1, 0.6, 0.0, 0.5, 0.0)]
    a = aggregate(runs, NAMES)
    per_seed = [0.6, 0.5]  # seed 0: (0.5 + 0.7) / 2, seed 1: (0.4 + 0.6) / 2
    assert a["miou"] == pytest.approx(statistics.fmean(per_seed))
    assert a["miou_std"] == pytest.approx(statistics.stdev(per_seed))
    assert a["rare_miou"] == pytest.approx(0.15) and a["rare_miou_std"] == pytest.approx(statistics.stdev([0.2, 0.1]))
    assert a["per_class"]["organ"]["iou"] == pytest.approx(0.45)
    assert a["per_class"]["vein"] == {"iou": None, "iou_std": None, "dice": None, "dice_std": None}
    assert a["absent"] == ["vein"] and a["seeds"] == [0, 1] and a["segmenters"] == ["segformer", "unet"]
    single = aggregate(runs[:1], NAMES)
    assert single["miou"] == 0.5 and single["miou_std"] is None  # one seed: no spread, not a 0


def result(model, role, seeds_miou, extractor="efficientnet_lite0:blocks.4", fid=None):
    per_seed = [{"seed": s, "miou": v, "mdice": v, "rare_miou": v / 2, "rare_mdice": None} for s, v in seeds_miou.items()]
    vals = list(seeds_miou.values())
    r = {"model": model, "role": role, "rare_classes": ["duct", "vein"],
         "semantic": {"miou": 0.3, "rare_miou": None},
         "downstream": {"per_seed": per_seed, "per_class": {"duct": {"iou": 0.1, "iou_std": None, "dice": 0.2,
                                                                     "dice_std": None}}}}
    for k in ("miou", "mdice"):
        r["downstream"][k], r["downstream"][f"{k}_std"] = statistics.fmean(vals), statistics.stdev(vals)
    r["downstream"]["rare_miou"], r["downstream"]["rare_miou_std"] = statistics.fmean(vals) / 2, None
    r["downstream"]["rare_mdice"], r["downstream"]["rare_mdice_std"] = None, None
    if fid is not None:
        r["quality"] = {"fid": fid, "kid": fid / 100, "extractor": extractor}
    return r


def test_leaderboard_rows_columns_intervals_and_verdicts():
    rows = {REAL: result(REAL, "reference", {0: 0.50, 1: 0.60, 2: 0.55}),
            CONTROL: result(CONTROL, "control", {0: 0.56, 1: 0.69, 2: 0.61}),
            "casdm": result("casdm", "method", {0: 0.55, 1: 0.70, 2: 0.62}, fid=12.0),
            "sdm": result("sdm", "baseline", {0: 0.40, 1: 0.58, 2: 0.50}, extractor="inception", fid=30.0)}
    rows = {k: EvaluationRow.model_validate(v) for k, v in rows.items()}
    found = comparisons(rows, {"casdm": "method", "sdm": "baseline"}, ["sdm", "casdm"], 0.95)
    columns, typed = build(rows, found)
    names, table = flat_table(columns, typed)
    assert {"fid:efficientnet_lite0:blocks.4", "fid:inception", "kid:inception", "delta_miou_low",
            "vs_control_miou_verdict", "precision:inception"} <= set(names)
    # what the file holds reads back to the same typed rows and columns
    assert columns_of(table[0]) == columns
    assert [LeaderboardRow.from_flat(r["model"], r).flat(columns) for r in table] == table
    by = {r["model"]: r for r in table}
    # two extractors never share a column: each row has a value in its own column only
    assert by["casdm"]["fid:efficientnet_lite0:blocks.4"] == 12.0 and by["casdm"]["fid:inception"] is None
    assert by["sdm"]["fid:inception"] == 30.0 and by["sdm"]["fid:efficientnet_lite0:blocks.4"] is None
    assert by[REAL]["fid:inception"] is None and by[REAL]["delta_miou"] is None
    diffs = [0.05, 0.10, 0.07]  # casdm - real, paired by seed; t(0.975, 2) = 4.3027
    half = 4.302652729911275 * statistics.stdev(diffs) / 3 ** 0.5
    assert by["casdm"]["delta_miou"] == pytest.approx(statistics.fmean(diffs))
    assert by["casdm"]["delta_miou_low"] == pytest.approx(statistics.fmean(diffs) - half)
    # [0.011, 0.136] excludes 0 and the raw p is 0.03, but four tests share the "vs real" family: Holm
    # multiplies the smallest p by 4, and the verdict is read from the adjusted test
    c = next(c for c in found if (c.a, c.b, c.metric) == ("casdm", REAL, "downstream_miou"))
    assert c.p < 0.05 < c.p_adjusted and by["casdm"]["delta_miou_verdict"] == "indistinguishable"
    assert by["casdm"]["vs_control_miou_verdict"] == "indistinguishable"
    assert by["sdm"]["delta_miou_verdict"] == "indistinguishable"
    assert by["casdm"]["semantic_rare_miou"] is None and by["casdm"]["downstream_rare_mdice"] is None  # absent stays absent
    assert all(names == list(r) for r in table)  # every row has every column, in the file's order
    ordered = sort_rows(typed, "downstream_miou", "desc", columns)
    assert [r.model for r in ordered] == ["casdm", CONTROL, REAL, "sdm"]
    assert [r.model for r in sort_rows(typed, "fid:inception", "asc", columns)][0] == "sdm"
    with pytest.raises(ValueError, match="leaderboard.primary 'fid' is not a leaderboard column"):
        sort_rows(typed, "fid", "asc", columns)
    md = markdown(columns, ordered, "t", found)
    assert "| casdm | method | 12.00 | 0.1200 |" in md and "0.623 ± 0.075" in md
    assert (f"| vs real | casdm | real | downstream_miou | +0.073 | [0.011, 0.136] | {c.p:.3f} | {c.p_adjusted:.3f} | "
            f"{c.mde:.3f} | - | indistinguishable | weights |") in md
    assert "Holm-adjusted within each family" in md


@pytest.mark.parametrize("control_seeds,note", [({0: 0.61, 1: 0.70, 2: 0.66}, "selection effect"),
                                                ({0: 0.70, 1: 0.55, 2: 0.70}, "not attributable")])
def test_a_gain_the_control_matches_is_attributed_only_from_tested_comparisons(control_seeds, note):
    rows = {REAL: result(REAL, "reference", {0: 0.50, 1: 0.60, 2: 0.55}),
            CONTROL: result(CONTROL, "control", control_seeds),
            "casdm": result("casdm", "method", {0: 0.60, 1: 0.71, 2: 0.655})}
    found = comparisons({k: EvaluationRow.model_validate(v) for k, v in rows.items()}, {"casdm": "method"}, [], 0.95)
    by = {(c.a, c.b, c.metric): c for c in found}
    gain = by[("casdm", REAL, "downstream_miou")]
    assert gain.verdict == "better" and by[("casdm", CONTROL, "downstream_miou")].verdict == "indistinguishable"
    positive = by[(CONTROL, REAL, "downstream_miou")].verdict
    assert positive == ("better" if note == "selection effect" else "indistinguishable")
    assert gain.note.startswith(note)


def test_missing_evaluation_is_named_with_its_stage(tmp_path):
    params = tiny_params()
    (tmp_path / "real.json").write_text(json.dumps(result(REAL, "reference", {0: 0.5, 1: 0.6})))
    with pytest.raises(FileNotFoundError, match=r"real\+control\.json: missing; run `dvc repro evaluate-control`"):
        load_rows(tmp_path, params)
    (tmp_path / "real+control.json").write_text(json.dumps(result(CONTROL, "control", {0: 0.5, 1: 0.6})))
    with pytest.raises(FileNotFoundError, match=r"casdm/seed0\.json: missing; run `dvc repro evaluate@casdm-0`"):
        load_rows(tmp_path, params)


def test_rare_first_picks_maps_holding_rare_classes(prepared):
    from benchmark.engine.data import PreparedDataset, pick_train_maps

    train = PreparedDataset(prepared, "train")
    rare = set(train.table.rare_ids)
    holds = [bool(rare & set(train[i]["labels"].unique().tolist())) for i in range(len(train))]
    k = sum(holds)
    assert 0 < k < len(train)
    cfg = tiny_params().sample
    picked = pick_train_maps(train, cfg.model_copy(update={"train_maps": k}))
    assert len(picked) == k and all(holds[i] for i in picked)
    rnd = pick_train_maps(train, cfg.model_copy(update={"train_maps": k + 2, "train_selection": "random"}))
    assert len(rnd) == k + 2 == len(set(rnd))
    assert pick_train_maps(train, cfg.model_copy(update={"train_maps": None})) == list(range(len(train)))


def test_efficientnet_stage_features_and_extractor_names_are_checked():
    from benchmark.metrics.quality import make_extractor

    ex = make_extractor("efficientnet_lite0:blocks.4")
    f = ex.fn(torch.rand(3, 3, 64, 64) * 255)
    assert ex.name == "efficientnet_lite0:blocks.4" and ex.dims == 112 and f.shape == (3, 112)
    assert np.isfinite(f.numpy()).all() and not torch.allclose(f[0], f[1])
    assert make_extractor("auto", offline="efficientnet_lite0:blocks.0").dims == 16
    with pytest.raises(ValueError, match="unknown feature extractor 'vgg'"):
        make_extractor("vgg")
    with pytest.raises(ConfigError, match=r"evaluate\.fid\.extractor: .*'efficientnet_lite0:blocks\.9'"):
        tiny_params(evaluate={"fid": {"extractor": "efficientnet_lite0:blocks.9"}})
    with pytest.raises(ConfigError, match=r"evaluate\.fid\.offline_extractor: .*must be an offline extractor"):
        tiny_params(evaluate={"fid": {"offline_extractor": "inception"}})
    with pytest.raises(ConfigError, match=r"evaluate\.downstream\.segmenters\.0"):
        tiny_params(evaluate={"downstream": {"segmenters": ["deeplab"]}})


def test_the_control_row_re_shows_exactly_the_sampled_training_maps(prepared, tmp_path, monkeypatch):
    """Size-matched control: real + the real images of the maps the sample stage turns into images."""
    import benchmark.stages.evaluate as ev
    from benchmark.engine.data import PreparedDataset, pick_train_maps

    params = tiny_params(evaluate={"downstream": {"seeds": [0], "steps": 2}})
    seen = {}
    real_downstream = ev.downstream

    def spy(cfg, datasets, test, log=print):
        seen["ids"] = [datasets[1][i]["id"] for i in range(len(datasets[1]))]
        seen["sizes"] = [len(d) for d in datasets]
        return real_downstream(cfg, datasets, test, log)

    monkeypatch.setattr(ev, "downstream", spy)
    r = ev.evaluate_control(params, prepared, tmp_path / "c.json", tmp_path / "c.csv", log=lambda *a: None)
    from benchmark.metrics.downstream import real_subset

    train = PreparedDataset(prepared, "train")
    picked = pick_train_maps(train, params.sample)
    d = params.evaluate.downstream
    real = real_subset(train, d.real_fraction, d.subset_seed)  # the scarce real set every row shares
    assert seen["ids"] == [train.rows[i]["id"] for i in picked] and seen["sizes"] == [len(real), len(picked)]
    assert r.model == "real+control" and r.train_images["repeated_real"] == len(picked) == 8
    assert r.train_images["real"] == len(real)  # the real set the segmenters saw, not the whole split
    assert json.loads((tmp_path / "c.json").read_text())["downstream"]["seeds"] == [0]
    with pytest.raises(ValueError, match="sample.train_maps is 0"):
        ev.evaluate_control(tiny_params(sample={"train_maps": 0}), prepared, tmp_path / "d.json", tmp_path / "d.csv")


@pytest.mark.parametrize("precision,shown", [(0.08, False), (0.7, True)])
def test_prdc_is_shown_only_when_real_against_real_passes(precision, shown):
    rows = {REAL: result(REAL, "reference", {0: 0.50, 1: 0.60}, fid=17.0),
            CONTROL: result(CONTROL, "control", {0: 0.56, 1: 0.69}),
            "casdm": result("casdm", "method", {0: 0.55, 1: 0.70}, fid=150.0)}
    rows[REAL]["quality"]["prdc"] = {"precision": precision, "recall": 0.6, "density": 0.3, "coverage": 0.5}
    rows["casdm"]["quality"]["prdc"] = {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    rows = {k: EvaluationRow.model_validate(v) for k, v in rows.items()}
    columns, typed = build(rows, comparisons(rows, {"casdm": "method"}, [], 0.95))
    casdm = next(r for r in typed if r.model == "casdm")
    ex = "efficientnet_lite0:blocks.4"
    assert (casdm.value(f"precision:{ex}") == 0.0) if shown else casdm.value(f"precision:{ex}") is None
    md = markdown(columns, typed, "t", [], prdc_withheld(rows))
    assert ("withheld" in md) != shown and (shown or "precision 0.08, recall 0.60 (< 0.5)" in md)


def test_the_comparisons_csv_has_a_column_for_every_field_of_a_comparison():
    from benchmark.results import Comparison
    from benchmark.stages.leaderboard import COMPARISON_COLUMNS

    assert sorted(COMPARISON_COLUMNS) == sorted(Comparison.model_fields)  # a new field without a column fails here
