"""The leaderboard stage: every evaluated row in one table, as DVC metrics and plots, a markdown
report, and MLflow (a leaderboard run holding the table; each model's training run gets its numbers).

Columns carry their extractor (``fid:efficientnet_lite0:blocks.4``), so FIDs from different feature
extractors can never share a column. Deltas are against the real-only row, paired by seed (the same
segmenter seeds train both), with the spread of the paired differences.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from benchmark.config import Params
from benchmark.evaluate import SCALARS
from benchmark.io import write_csv, write_json, write_text

REAL = "real"
MAPS = "maps"  # metrics/evaluate/maps.json: the "real + generated maps" row (evaluate-maps)
MAP_COLUMNS = ("adherence", "rare_presence", "cooccurrence_l1", "area_w1", "diversity")


def load_rows(folder: Path, params: Params) -> dict[str, dict]:
    """metrics/evaluate/*.json in leaderboard order: real, params.yaml's models, the generated-maps row
    (named ``<image model>+maps``)."""
    folder = Path(folder)
    rows = {}
    for name in [REAL, *params.models, MAPS]:
        path = folder / f"{name}.json"
        if not path.exists():
            stage = {REAL: "evaluate-real", MAPS: "evaluate-maps"}.get(name, f"evaluate@{name}")
            raise FileNotFoundError(f"{path}: missing; run `dvc repro {stage}`")
        row = json.loads(path.read_text())
        rows[row["model"] if name == MAPS else name] = row
    return rows


def _paired_delta(row: dict, real: dict, key: str) -> tuple[float | None, float | None]:
    ours = {p["seed"]: p[key] for p in row["downstream"]["per_seed"]}
    base = {p["seed"]: p[key] for p in real["downstream"]["per_seed"]}
    diffs = [ours[s] - base[s] for s in ours if s in base and ours[s] is not None and base[s] is not None]
    if not diffs or len(diffs) < len(ours):
        return None, None
    return statistics.fmean(diffs), (statistics.stdev(diffs) if len(diffs) > 1 else None)


def build(rows: dict[str, dict]) -> tuple[list[str], list[dict]]:
    """(columns, table rows) from the evaluation results."""
    real = rows[REAL]
    extractors = sorted({r["quality"]["extractor"] for r in rows.values() if "quality" in r})
    columns = ["model", "role"]
    for ex in extractors:
        columns += [f"fid:{ex}", f"kid:{ex}"]
    columns += ["semantic_miou", "semantic_rare_miou"]
    for k in SCALARS:
        columns += [f"downstream_{k}", f"downstream_{k}_std"]
    for k in SCALARS:
        columns += [f"delta_{k}", f"delta_{k}_std"]
    if any("maps" in r for r in rows.values()):
        columns += [f"maps_{k}" for k in MAP_COLUMNS] + [f"maps_baseline_{k}" for k in MAP_COLUMNS]
    table = []
    for name, r in rows.items():
        row = {"model": name, "role": r.get("role", "")}
        for ex in extractors:
            q = r.get("quality") if r.get("quality", {}).get("extractor") == ex else None
            row[f"fid:{ex}"], row[f"kid:{ex}"] = (q["fid"], q["kid"]) if q else (None, None)
        row["semantic_miou"], row["semantic_rare_miou"] = r["semantic"]["miou"], r["semantic"]["rare_miou"]
        for k in SCALARS:
            row[f"downstream_{k}"], row[f"downstream_{k}_std"] = r["downstream"][k], r["downstream"][f"{k}_std"]
            row[f"delta_{k}"], row[f"delta_{k}_std"] = (None, None) if name == REAL else _paired_delta(r, real, k)
        if "maps_adherence" in columns:  # the map generator's own scores, and the retrieval baseline's
            for who, prefix in (("generator", "maps_"), ("baseline", "maps_baseline_")):
                for k in MAP_COLUMNS:
                    row[prefix + k] = r["maps"][who][k] if "maps" in r else None
        table.append(row)
    return columns, table


def sort_rows(table: list[dict], primary: str, order: str) -> list[dict]:
    if table and primary not in table[0]:
        raise ValueError(f"leaderboard.primary {primary!r} is not a leaderboard column; expected one of "
                         f"{', '.join(k for k in table[0] if k not in ('model', 'role'))}")
    present = [r for r in table if r[primary] is not None]
    missing = [r for r in table if r[primary] is None]
    return sorted(present, key=lambda r: r[primary], reverse=order == "desc") + missing


def fmt(row: dict, col: str) -> str:
    """``mean ± std`` for a column with a spread, ``-`` for a missing value."""
    v = row.get(col)
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    digits = 2 if col.startswith("fid:") else 4 if col.startswith("kid:") else 3
    std = row.get(f"{col}_std")
    return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def display_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if not c.endswith("_std")]


def markdown(columns: list[str], table: list[dict], title: str) -> str:
    cols = display_columns(columns)
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r, c) for c in cols) + " |" for r in table]
    lines += ["", "Downstream columns: mean ± sample std over segmenter seeds; deltas are paired by seed against "
              "the real-only row. FID/KID are one sample set per model (no spread). `-`: not applicable or "
              "absent (a class with no test pixel never enters a mean)."]
    if any(c.startswith("maps_") for c in cols):
        lines += ["", "`maps_*`: the text-prompted map generator's maps (row `<image model>+maps`), "
                  "`maps_baseline_*`: a random real training map with the prompt's class set. adherence: mean of "
                  "presence / absence / size / location / quantity shares; cooccurrence_l1, area_w1: distance "
                  "to the real training maps (lower = more realistic); diversity: pixel disagreement between "
                  "maps of one prompt."]
    return "\n".join(lines) + "\n"


def write_outputs(params: Params, rows: dict[str, dict], metrics: Path, plots: Path, report: Path) -> list[dict]:
    columns, table = build(rows)
    table = sort_rows(table, params.leaderboard.primary, params.leaderboard.sort)
    write_json(metrics, {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in table})
    write_csv(Path(plots) / "summary.csv", columns, table)
    write_csv(Path(plots) / "per_class.csv", ["model", "class", "rare", "iou", "iou_std", "dice", "dice_std"],
              [{"model": model, "class": cls, "rare": int(cls in r["rare_classes"]), **d}
               for model, r in rows.items() for cls, d in r["downstream"]["per_class"].items()])
    write_text(Path(report), markdown(columns, table, f"{params.report.title}: leaderboard"))
    return table


def log_mlflow(params: Params, table: list[dict], rows: dict[str, dict], report: Path) -> str:
    """A leaderboard run with the table artifact; each model's training run gets its numbers."""
    import mlflow

    from benchmark.engine.trainer import resolved_config
    from benchmark.tracking import connect, flatten, git_commit, hash_json

    exp = connect(params.tracking)
    numeric = lambda r: {k: float(v) for k, v in r.items() if isinstance(v, (int, float)) and v is not None}
    client = mlflow.MlflowClient()
    linked, now = {}, int(time.time() * 1000)
    for name in params.models:
        config_hash = hash_json(resolved_config(params, name))
        runs = client.search_runs([exp.experiment_id], f"tags.model = '{name}' and tags.params_hash = '{config_hash}' "
                                  "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if runs:
            row = next(r for r in table if r["model"] == name)
            client.log_batch(runs[0].info.run_id, [mlflow.entities.Metric(f"eval/{k}", v, now, 0)
                                                   for k, v in numeric(row).items()])
            linked[name] = runs[0].info.run_id
    with mlflow.start_run(run_name="leaderboard") as run:
        mlflow.set_tags({"kind": "leaderboard", "git_commit": git_commit(), "primary": params.leaderboard.primary,
                         "params_hash": hash_json(params.model_dump(mode="json"))})
        mlflow.log_params({"primary": params.leaderboard.primary, "sort": params.leaderboard.sort,
                           **{f"run/{k}": v for k, v in linked.items()}})
        mlflow.log_table({c: [r.get(c) for r in table] for c in table[0]}, artifact_file="leaderboard.json")
        mlflow.log_artifact(str(report))
        for r in table:
            key = r["model"].replace("+", "_plus_")  # MLflow metric names allow no "+" ("casdm+maps")
            mlflow.log_metrics({f"{key}/{k}": v for k, v in numeric(r).items()})
        mlflow.log_dict({n: flatten(r["downstream"]["per_class"]) for n, r in rows.items()}, "per_class.json")
        return run.info.run_id


def latest_table(params: Params) -> tuple[str, "object"]:
    """The newest leaderboard run's table (a pandas DataFrame) from MLflow."""
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
    return run_id, mlflow.MlflowClient().load_table(exp.experiment_id, "leaderboard.json", run_ids=[run_id])


SHORT = {"semantic_miou": "semantic mIoU", "semantic_rare_miou": "semantic rare mIoU", "downstream_miou": "mIoU",
         "downstream_mdice": "mDice", "downstream_rare_miou": "rare mIoU", "downstream_rare_mdice": "rare mDice",
         "delta_miou": "Δ mIoU", "delta_rare_miou": "Δ rare mIoU", "delta_mdice": "Δ mDice",
         "delta_rare_mdice": "Δ rare mDice", "maps_adherence": "maps adherence"}


def rich_table(params: Params, run_id: str, df, full: bool = False):
    """The leaderboard as a rich Table: the headline columns (every column with ``full``)."""
    from rich.table import Table

    columns = [c for c in df.columns if c != "run_id"]
    shown = [c for c in display_columns(columns) if full or c in ("model", "role") or c.startswith(("fid:", "kid:"))
             or c in SHORT and "mdice" not in c.removeprefix("downstream_") or c == "downstream_mdice"]
    extractors = sorted({c.split(":", 1)[1] for c in shown if c.startswith("fid:")})
    t = Table(title=f"leaderboard (MLflow run {run_id[:8]}, sorted by {params.leaderboard.primary}); "
                    f"FID/KID features: {', '.join(extractors) or '-'}; downstream: mean ± std over seeds")
    for c in shown:
        label = c.split(":")[0].upper() + (f" [{extractors.index(c.split(':', 1)[1]) + 1}]" if len(extractors) > 1
                                            else "") if c.startswith(("fid:", "kid:")) else SHORT.get(c, c)
        names = [str(v) for v in df[c]] if c in ("model", "role") else []
        t.add_column(label, justify="left" if names else "right", no_wrap=True,
                     min_width=max(map(len, names), default=None))  # names are never cut short
    for rec in df.to_dict("records"):
        rec = {k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}
        t.add_row(*[fmt(rec, c) for c in shown])
    return t
