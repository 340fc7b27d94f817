"""The leaderboard stage: every evaluated row in one table, with every comparison's interval and
verdict, as DVC metrics and plots, a markdown report, and MLflow (a leaderboard run holding the table;
each model's training run gets its numbers).

Rows: ``real`` (real only; its FID/KID/PRDC are real training images against the test images, the floor
for this extractor and image count; its semantic mIoU is the judge on real test images, the ceiling),
``real+control`` (real + the real images of the sampled training maps: the size-matched control), the
models of params.yaml, the generated-maps row. Columns carry their extractor
(``fid:efficientnet_lite0:blocks.4``), so FIDs from different extractors never share a column.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from benchmark.seeds import seed_path
from benchmark.stages.comparisons import attach_seed_spread, comparisons
from benchmark.config import Params
from benchmark.metrics.downstream import SCALARS
from benchmark.metrics.pooling import pool
from benchmark.io import read_json, write_csv, write_json, write_text
from benchmark.report.tables import markdown
from benchmark.results import CONTROL, REAL, Column, Comparison, Estimate, EvaluationRow, LeaderboardRow, MapScores, columns_of

MAPS = "maps"  # metrics/evaluate/maps.json: the "real + generated maps" row (evaluate-maps)
MAP_COLUMNS = tuple(MapScores.model_fields)  # adherence, rare_presence, cooccurrence_l1, area_w1, diversity
PRDC = ("precision", "recall", "density", "coverage")
REFS = {"delta": REAL, "vs_control": CONTROL}  # column prefix -> the row compared with
STAGES = {REAL: "evaluate-real", CONTROL: "evaluate-control", MAPS: "evaluate-maps"}
INTERVAL, SPREAD, VERDICT = ("low", "high"), ("std",), ("low", "high", "verdict")
# plots/leaderboard/comparisons.csv: every field of a Comparison (a test holds the two together)
COMPARISON_COLUMNS = ["kind", "a", "b", "metric", "delta", "low", "high", "verdict", "n", "method", "p", "p_adjusted",
                      "mde", "seed_sd", "seed_sd_from", "family", "scope", "note"]
PRDC_VALID = 0.5  # real vs real precision and recall below this: PRDC cannot tell a model from the data


def prdc_withheld(rows: dict[str, EvaluationRow]) -> str | None:
    """Why the PRDC columns are withheld (None: they are shown): real training images against real test
    images must score precision and recall >= 0.5, or the k-NN manifolds are too sparse (too few images
    for the feature dimension, or k too small) for any model's PRDC to mean something."""
    ref = rows.get(REAL)
    if ref is None or ref.quality is None or not ref.quality.prdc:
        return "no real-vs-real PRDC to check them against"
    pr = ref.quality.prdc
    if min(pr.get("precision", 0), pr.get("recall", 0)) >= PRDC_VALID:
        return None
    return (f"real training vs real test images score precision {pr.get('precision', 0):.2f}, recall "
            f"{pr.get('recall', 0):.2f} (< {PRDC_VALID}) with {ref.quality.images_real} images of "
            f"{ref.quality.extractor} features: at this scale PRDC cannot tell a model from the data")


def read_row(path: Path, stage: str, training: Path | None = None) -> EvaluationRow:
    """One metrics/evaluate JSON as a typed row (with its training budget when ``training`` is given)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro {stage}`")
    row = read_json(path, f"the metrics JSON `dvc repro {stage}` writes")
    if training is not None:
        if not training.exists():
            raise FileNotFoundError(f"{training}: missing; run `dvc repro {stage.replace('evaluate@', 'train@')}`")
        row["training"] = read_json(training, "the training metrics JSON the train stage writes")
    try:
        return EvaluationRow.model_validate(row)
    except ValueError as exc:
        raise ValueError(f"{path}: not an evaluation row ({exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}); "
                         f"run `dvc repro {stage}` again") from None


def load_rows(folder: Path, params: Params, train_folder: Path | None = None) -> dict[str, EvaluationRow]:
    """metrics/evaluate/ in leaderboard order: real, the control, params.yaml's models (each pooled over
    ``train.seeds`` from ``<model>/seed<N>.json``, with its training budget from ``train_folder``), the
    generated-maps row (named ``<image model>+maps``)."""
    folder = Path(folder)
    level = params.evaluate.bootstrap.level
    rows = {}
    for name in [REAL, CONTROL, *params.models, MAPS]:
        if name in params.models:
            rows[name] = pool([read_row(seed_path(folder, name, s, ".json"), f"evaluate@{name}-{s}",
                                        None if train_folder is None else seed_path(train_folder, name, s, ".json"))
                               for s in params.train.seeds], level)
        else:
            typed = read_row(folder / f"{name}.json", STAGES[name])
            rows[typed.model if name == MAPS else name] = typed
    return rows


def read_seed_spread(path: Path | None) -> tuple[list[Comparison], str]:
    """A multi-seed run's comparisons (its ``seed_sd``), and how a one-seed run names where they came from."""
    if path is None:
        return [], ""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: missing (a multi-seed run's comparisons.json, e.g. the cpu-seeds profile's)")
    try:
        found = [Comparison.model_validate(c) for c in json.loads(Path(path).read_text())]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a leaderboard's comparisons ({exc}); expected a comparisons.json") from None
    return found, Path(path).stem.removeprefix("comparisons_")


def columns_for(rows: dict[str, EvaluationRow]) -> list[Column]:
    """The leaderboard's columns, in the file's order, each with the parts its cells carry."""
    extractors = sorted({r.quality.extractor for r in rows.values() if r.quality})
    columns = []
    for ex in extractors:
        columns += [Column(name=f"{m}:{ex}", parts=INTERVAL) for m in ("fid", "kid")]
        columns += [Column(name=f"{m}:{ex}") for m in PRDC]
    columns += [Column(name="colour_shift")]
    columns += [Column(name=f"semantic_{m}", parts=INTERVAL) for m in ("miou", "rare_miou")]
    columns += [Column(name=f"downstream_{k}", parts=SPREAD) for k in SCALARS]
    columns += [Column(name=f"{p}_{m}", parts=VERDICT) for p in REFS for m in ("miou", "rare_miou")]
    columns += [Column(name=n) for n in ("map_conditioned_steps", "images_seen", "downstream_segmenter")]
    if any(r.maps for r in rows.values()):
        columns += [Column(name=f"maps_{k}") for k in MAP_COLUMNS] + [Column(name=f"maps_baseline_{k}")
                                                                        for k in MAP_COLUMNS]
    return columns


def cells_of(name: str, r: EvaluationRow, by: dict[tuple, Comparison], with_maps: bool,
             show_prdc: bool = True) -> dict[str, Estimate]:
    """One row's cells: its own scores, and its comparisons against real only and the control."""
    cells: dict[str, Estimate] = {}
    if r.quality:
        ex = r.quality.extractor
        cells.update({f"{m}:{ex}": r.quality.estimate(m) for m in ("fid", "kid")})
        cells.update({f"{m}:{ex}": Estimate(value=r.quality.prdc.get(m) if show_prdc else None) for m in PRDC})
        cells["colour_shift"] = Estimate(value=(r.quality.colour or {}).get("colour_shift"))
    if r.semantic:
        cells.update({f"semantic_{m}": r.semantic.estimate(m) for m in ("miou", "rare_miou")})
    cells.update({f"downstream_{k}": r.downstream.estimate(k) for k in SCALARS})
    for prefix, ref in REFS.items():
        for m in ("miou", "rare_miou"):
            c = by.get((name, ref, f"downstream_{m}"))
            if c is not None:
                cells[f"{prefix}_{m}"] = Estimate(value=c.delta, low=c.low, high=c.high, verdict=c.verdict)
    trained = r.training or {}
    cells["map_conditioned_steps"] = Estimate(value=trained.get("map_conditioned_steps"))
    cells["images_seen"] = Estimate(value=trained.get("images_seen"))
    cells["downstream_segmenter"] = Estimate(value="; ".join(r.downstream.segmenter_labels.values()) or None)
    if with_maps:  # the map generator's own scores, and the retrieval baseline's
        for who, prefix in (("generator", "maps_"), ("baseline", "maps_baseline_")):
            scores = (r.maps or {}).get(who)
            cells.update({prefix + k: Estimate(value=None if scores is None else getattr(scores, k))
                          for k in MAP_COLUMNS})
    return cells


def build(rows: dict[str, EvaluationRow], found: list[Comparison]) -> tuple[list[Column], list[LeaderboardRow]]:
    """(columns, table rows) from the evaluation results and the comparisons."""
    columns = columns_for(rows)
    with_maps = any(c.name.startswith("maps_") for c in columns)
    by = {(c.a, c.b, c.metric): c for c in found}
    show_prdc = prdc_withheld(rows) is None
    return columns, [LeaderboardRow(model=name, role=r.role, cells=cells_of(name, r, by, with_maps, show_prdc))
                     for name, r in rows.items()]


def sort_rows(table: list[LeaderboardRow], primary: str, order: str, columns: list[Column]) -> list[LeaderboardRow]:
    names = [c.name for c in columns]
    if primary not in names:
        raise ValueError(f"leaderboard.primary {primary!r} is not a leaderboard column; expected one of "
                         f"{', '.join(names)}")
    present = [r for r in table if r.value(primary) is not None]
    missing = [r for r in table if r.value(primary) is None]
    return sorted(present, key=lambda r: r.value(primary), reverse=order == "desc") + missing


def flat_table(columns: list[Column], table: list[LeaderboardRow]) -> tuple[list[str], list[dict]]:
    """The table as the files hold it: one flat dict per row, its parts as ``<column>_<part>``."""
    return ["model", "role", *(n for c in columns for n in c.flat_names())], [r.flat(columns) for r in table]


HEADLINE = ("fid", "semantic_miou", "downstream_miou", "downstream_rare_miou")


def headline_metrics(columns: list[Column], table: list[LeaderboardRow]) -> dict[str, dict[str, float | None]]:
    """Model x the headline scores, numbers only: what ``dvc metrics show`` and ``dvc exp show`` print in a
    terminal (the leaderboard file, with intervals, verdicts and segmenter names, is hundreds of columns)."""
    fid = next((c.name for c in columns if c.name.startswith("fid:")), None)
    names = {"fid": fid, "semantic_miou": "semantic_miou", "downstream_miou": "downstream_miou",
             "downstream_rare_miou": "downstream_rare_miou"}
    return {r.model: {key: None if names[key] is None else r.value(names[key]) for key in HEADLINE} for r in table}


def write_outputs(params: Params, rows: dict[str, EvaluationRow], metrics: Path, plots: Path, report: Path,
                  comparisons_file: Path, seed_spread: Path | None = None,
                  headline: Path | None = None) -> tuple[list[dict], list[Comparison]]:
    roles = {n: e.role for n, e in params.models.items()}
    found = comparisons(rows, roles, params.leaderboard.ladder, params.evaluate.bootstrap.level,
                        params.evaluate.bootstrap.unit)
    attach_seed_spread(found, *read_seed_spread(seed_spread))
    columns, typed = build(rows, found)
    typed = sort_rows(typed, params.leaderboard.primary, params.leaderboard.sort, columns)
    names, table = flat_table(columns, typed)
    write_json(metrics, {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in table})
    write_json(comparisons_file, [c.to_json() for c in found])
    if headline is not None:
        write_json(headline, headline_metrics(columns, typed))
    write_csv(Path(plots) / "summary.csv", names, table)
    write_csv(Path(plots) / "per_class.csv", ["model", "class", "rare", "iou", "iou_std", "dice", "dice_std"],
              [{"model": model, "class": cls, "rare": int(cls in r.rare_classes), **d}
               for model, r in rows.items() for cls, d in r.downstream.per_class.items()])
    write_csv(Path(plots) / "comparisons.csv", COMPARISON_COLUMNS, [c.to_json() for c in found])
    write_text(Path(report), markdown(columns, typed, f"{params.report.title}: leaderboard", found,
                                      prdc_withheld(rows)))
    return table, found


def log_mlflow(params: Params, table: list[dict], rows: dict[str, EvaluationRow], report: Path,
               found: list[Comparison]) -> str:
    """A leaderboard run with the table artifact; each model's training run gets its numbers. Returns the
    address of the run in MLflow's UI (``tracking.ui_url``)."""
    import mlflow

    from benchmark.kinds.registry import training_config
    from benchmark.provenance import git_commit, hash_json, redact_tree
    from benchmark.tracking import connect, flatten, owner_tags, tracking_uri, ui_url

    exp = connect(params.tracking)
    numeric = lambda r: {k: float(v) for k, v in r.items() if isinstance(v, (int, float)) and v is not None}
    client = mlflow.MlflowClient()
    linked, now = {}, int(time.time() * 1000)
    for name in params.models:  # every seed's training run gets its model's row (the mean over seeds)
        for seed in params.train.seeds:
            seeded = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
            config_hash = hash_json(training_config(seeded, name))
            runs = client.search_runs([exp.experiment_id], f"tags.model = '{name}' and tags.params_hash = "
                                      f"'{config_hash}' and attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                row = next(r for r in table if r["model"] == name)
                client.log_batch(runs[0].info.run_id, [mlflow.entities.Metric(f"eval/{k}", v, now, 0)
                                                       for k, v in numeric(row).items()])
                linked[f"{name}-seed{seed}"] = runs[0].info.run_id
    with mlflow.start_run(run_name="leaderboard") as run:
        mlflow.set_tags({**owner_tags(), "kind": "leaderboard", "git_commit": git_commit(), "primary": params.leaderboard.primary,
                         "params_hash": hash_json(params.model_dump(mode="json"))})
        mlflow.log_params({"primary": params.leaderboard.primary, "sort": params.leaderboard.sort,
                           **{f"run/{k}": v for k, v in linked.items()}})
        # the artifact viewer reads a "." in a column name as a path and shows the column blank: "_" there
        mlflow.log_table({c.replace(".", "_"): [r.get(c) for r in table] for c in table[0]},
                         artifact_file="leaderboard.json")
        mlflow.log_artifact(str(report))
        for r in table:
            key = r["model"].replace("+", "_plus_")  # MLflow metric names allow no "+" ("casdm+maps")
            mlflow.log_metrics({f"{key}/{k}": v for k, v in numeric(r).items()})
        mlflow.log_dict({n: flatten(r.downstream.per_class) for n, r in rows.items()}, "per_class.json")
        mlflow.log_dict([c.to_json() for c in found], "comparisons.json")
        # what `casdm report compare RUN_ID ...` reads back: the rows as metrics/leaderboard.json holds them, the params
        mlflow.log_dict({r["model"]: {k: v for k, v in r.items() if k != "model"} for r in table}, "leaderboard_rows.json")
        mlflow.log_dict(redact_tree(params.model_dump(mode="json")), "params.json")  # no password of a storage URL
        return ui_url(tracking_uri(params.tracking), exp.experiment_id, run.info.run_id)


def latest_table(params: Params) -> tuple[str, list[Column], list[LeaderboardRow]]:
    """The newest leaderboard run's id, columns and rows, read back from its MLflow table."""
    import mlflow

    from benchmark.tracking import connect

    exp = connect(params.tracking)
    runs = mlflow.MlflowClient().search_runs(
        [exp.experiment_id], "tags.kind = 'leaderboard' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise LookupError(f"no leaderboard run in MLflow experiment {params.tracking.experiment!r} at "
                          f"{mlflow.get_tracking_uri()}; run `dvc repro leaderboard` first")
    run_id = runs[0].info.run_id
    # the rows under their own column names (the browsable leaderboard.json table has "." replaced)
    rows = mlflow.artifacts.load_dict(f"runs:/{run_id}/leaderboard_rows.json")
    records = [{"model": name, **row} for name, row in rows.items()]
    return run_id, columns_of(records[0]), [LeaderboardRow.from_flat(rec["model"], rec) for rec in records]
