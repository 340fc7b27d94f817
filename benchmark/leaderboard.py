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

from benchmark.comparisons import CONTROL, REAL, comparisons
from benchmark.config import Params
from benchmark.downstream import SCALARS
from benchmark.io import write_csv, write_json, write_text
from benchmark.results import Comparison, MapScores

MAPS = "maps"  # metrics/evaluate/maps.json: the "real + generated maps" row (evaluate-maps)
MAP_COLUMNS = tuple(MapScores.model_fields)  # adherence, rare_presence, cooccurrence_l1, area_w1, diversity
PRDC = ("precision", "recall", "density", "coverage")
REFS = {"delta": REAL, "vs_control": CONTROL}  # column prefix -> the row compared with
STAGES = {REAL: "evaluate-real", CONTROL: "evaluate-control", MAPS: "evaluate-maps"}


def load_rows(folder: Path, params: Params, train_folder: Path | None = None) -> dict[str, dict]:
    """metrics/evaluate/*.json in leaderboard order: real, the control, params.yaml's models, the
    generated-maps row (named ``<image model>+maps``); each model with its training budget
    (``train_folder``/<model>.json: map-conditioned steps, images seen)."""
    folder = Path(folder)
    rows = {}
    for name in [REAL, CONTROL, *params.models, MAPS]:
        path = folder / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run `dvc repro {STAGES.get(name, f'evaluate@{name}')}`")
        row = json.loads(path.read_text())
        trained = Path(train_folder or "") / f"{name}.json"
        if train_folder is not None and name in params.models:
            if not trained.exists():
                raise FileNotFoundError(f"{trained}: missing; run `dvc repro train@{name}`")
            row["training"] = json.loads(trained.read_text())
        rows[row["model"] if name == MAPS else name] = row
    return rows


def build(rows: dict[str, dict], found: list[Comparison]) -> tuple[list[str], list[dict]]:
    """(columns, table rows) from the evaluation results and the comparisons."""
    extractors = sorted({r["quality"]["extractor"] for r in rows.values() if r.get("quality")})
    columns = ["model", "role"]
    for ex in extractors:
        columns += [f"{m}:{ex}{s}" for m in ("fid", "kid") for s in ("", "_low", "_high")]
        columns += [f"{m}:{ex}" for m in PRDC]
    columns += ["colour_shift"]
    columns += [f"semantic_{m}{s}" for m in ("miou", "rare_miou") for s in ("", "_low", "_high")]
    columns += [f"downstream_{k}{s}" for k in SCALARS for s in ("", "_std")]
    columns += [f"{p}_{m}{s}" for p in REFS for m in ("miou", "rare_miou") for s in ("", "_low", "_high", "_verdict")]
    columns += ["map_conditioned_steps", "images_seen", "downstream_segmenter"]
    if any("maps" in r for r in rows.values()):
        columns += [f"maps_{k}" for k in MAP_COLUMNS] + [f"maps_baseline_{k}" for k in MAP_COLUMNS]
    by = {(c.a, c.b, c.metric): c for c in found}
    table = []
    for name, r in rows.items():
        row = dict.fromkeys(columns)
        row.update(model=name, role=r.get("role", ""))
        q = r.get("quality")
        if q:
            ex = q["extractor"]
            for m in ("fid", "kid"):
                row.update({f"{m}:{ex}": q[m], f"{m}:{ex}_low": q.get(f"{m}_low"), f"{m}:{ex}_high": q.get(f"{m}_high")})
            row.update({f"{m}:{ex}": q.get("prdc", {}).get(m) for m in PRDC})
            row["colour_shift"] = q.get("colour", {}).get("colour_shift")
        for m in ("miou", "rare_miou"):
            sem = r.get("semantic") or {}
            row.update({f"semantic_{m}{s}": sem.get(f"{m}{s}") for s in ("", "_low", "_high")})
        for k in SCALARS:
            row[f"downstream_{k}"], row[f"downstream_{k}_std"] = r["downstream"][k], r["downstream"][f"{k}_std"]
        for prefix, ref in REFS.items():
            for m in ("miou", "rare_miou"):
                c = by.get((name, ref, f"downstream_{m}"))
                part = lambda field: None if c is None else getattr(c, field)
                row.update({f"{prefix}_{m}": part("delta"), f"{prefix}_{m}_low": part("low"),
                            f"{prefix}_{m}_high": part("high"), f"{prefix}_{m}_verdict": part("verdict")})
        trained = r.get("training", {})
        row["map_conditioned_steps"], row["images_seen"] = trained.get("map_conditioned_steps"), trained.get("images_seen")
        row["downstream_segmenter"] = "; ".join(r["downstream"].get("segmenter_labels", {}).values()) or None
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


def digits(col: str) -> int:
    return 2 if col.startswith("fid:") else 4 if col.startswith("kid:") else 3


def fmt(row: dict, col: str) -> str:
    """``mean ± std`` for a column with a spread, ``value [low, high] verdict`` for one with an interval,
    ``-`` for a missing value."""
    v = row.get(col)
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    d = digits(col)
    text = f"{v:.{d}f}"
    if row.get(f"{col}_std") is not None:
        text += f" ± {row[f'{col}_std']:.{d}f}"
    if row.get(f"{col}_low") is not None:
        text += f" [{row[f'{col}_low']:.{d}f}, {row[f'{col}_high']:.{d}f}]"
    if row.get(f"{col}_verdict"):
        text += f" {row[f'{col}_verdict']}"
    return text


def display_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if not c.endswith(("_std", "_low", "_high", "_verdict")) and c != "downstream_segmenter"]


def comparison_lines(found: list[Comparison]) -> list[str]:
    lines = ["| comparison | A | B | metric | A - B | 95 % interval | verdict | interval from | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in found:
        d = digits(c.metric + ":")
        interval = "-" if c.low is None else f"[{c.low:.{d}f}, {c.high:.{d}f}]"
        lines.append(f"| {c.kind} | {c.a} | {c.b} | {c.metric} | {c.delta:+.{d}f} | {interval} | "
                     f"{c.verdict} | {c.method} (n = {c.n}) | {c.note or ''} |")
    return lines


def markdown(columns: list[str], table: list[dict], title: str, found: list[Comparison] = ()) -> str:
    cols = display_columns(columns)
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r, c) for c in cols) + " |" for r in table]
    segmenters = {r["downstream_segmenter"] for r in table if r.get("downstream_segmenter")}
    lines += ["", "Downstream columns: mean ± sample std over segmenter seeds; `delta_*` (against real only) and "
              "`vs_control_*` (against the size-matched control) are paired by seed: mean [95 % t interval] and the "
              "verdict. FID, KID and semantic mIoU: the value on all test maps [95 % bootstrap percentile interval "
              "over test maps, the same resamples for every row]. precision / recall / density / coverage: PRDC on "
              "the FID features. `real`: FID/KID/PRDC of real training images against the test images (the floor "
              "for this extractor and image count), semantic mIoU of the judge on real test images (the ceiling). "
              "`real+control`: real + the real images of the training maps every model's synthetic set is drawn "
              "from. `-`: not applicable or absent (a class with no test pixel never enters a mean).",
              "", "Downstream segmenter: " + " | ".join(sorted(segmenters))]
    if any(c.startswith("maps_") for c in cols):
        lines += ["", "`maps_*`: the text-prompted map generator's maps (row `<image model>+maps`), "
                  "`maps_baseline_*`: a random real training map with the prompt's class set. adherence: mean of "
                  "presence / absence / size / location / quantity shares; cooccurrence_l1, area_w1: distance "
                  "to the real training maps (lower = more realistic); diversity: pixel disagreement between "
                  "maps of one prompt."]
    if found:
        lines += ["", "## Comparisons", "", *comparison_lines(found)]
    return "\n".join(lines) + "\n"


def write_outputs(params: Params, rows: dict[str, dict], metrics: Path, plots: Path, report: Path,
                  comparisons_file: Path) -> tuple[list[dict], list[Comparison]]:
    roles = {n: e.role for n, e in params.models.items()}
    found = comparisons(rows, roles, params.leaderboard.ladder, params.evaluate.bootstrap.level)
    columns, table = build(rows, found)
    table = sort_rows(table, params.leaderboard.primary, params.leaderboard.sort)
    write_json(metrics, {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in table})
    write_json(comparisons_file, [c.to_json() for c in found])
    write_csv(Path(plots) / "summary.csv", columns, table)
    write_csv(Path(plots) / "per_class.csv", ["model", "class", "rare", "iou", "iou_std", "dice", "dice_std"],
              [{"model": model, "class": cls, "rare": int(cls in r["rare_classes"]), **d}
               for model, r in rows.items() for cls, d in r["downstream"]["per_class"].items()])
    write_csv(Path(plots) / "comparisons.csv", ["kind", "a", "b", "metric", "delta", "low", "high", "verdict", "n",
                                                "method", "note"], [c.to_json() for c in found])
    write_text(Path(report), markdown(columns, table, f"{params.report.title}: leaderboard", found))
    return table, found


def log_mlflow(params: Params, table: list[dict], rows: dict[str, dict], report: Path,
               found: list[Comparison]) -> str:
    """A leaderboard run with the table artifact; each model's training run gets its numbers."""
    import mlflow

    from benchmark.kinds.registry import training_config
    from benchmark.provenance import git_commit, hash_json
    from benchmark.tracking import connect, flatten, owner_tags

    exp = connect(params.tracking)
    numeric = lambda r: {k: float(v) for k, v in r.items() if isinstance(v, (int, float)) and v is not None}
    client = mlflow.MlflowClient()
    linked, now = {}, int(time.time() * 1000)
    for name in params.models:
        config_hash = hash_json(training_config(params, name))
        runs = client.search_runs([exp.experiment_id], f"tags.model = '{name}' and tags.params_hash = '{config_hash}' "
                                  "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if runs:
            row = next(r for r in table if r["model"] == name)
            client.log_batch(runs[0].info.run_id, [mlflow.entities.Metric(f"eval/{k}", v, now, 0)
                                                   for k, v in numeric(row).items()])
            linked[name] = runs[0].info.run_id
    with mlflow.start_run(run_name="leaderboard") as run:
        mlflow.set_tags({**owner_tags(), "kind": "leaderboard", "git_commit": git_commit(), "primary": params.leaderboard.primary,
                         "params_hash": hash_json(params.model_dump(mode="json"))})
        mlflow.log_params({"primary": params.leaderboard.primary, "sort": params.leaderboard.sort,
                           **{f"run/{k}": v for k, v in linked.items()}})
        mlflow.log_table({c: [r.get(c) for r in table] for c in table[0]}, artifact_file="leaderboard.json")
        mlflow.log_artifact(str(report))
        for r in table:
            key = r["model"].replace("+", "_plus_")  # MLflow metric names allow no "+" ("casdm+maps")
            mlflow.log_metrics({f"{key}/{k}": v for k, v in numeric(r).items()})
        mlflow.log_dict({n: flatten(r["downstream"]["per_class"]) for n, r in rows.items()}, "per_class.json")
        mlflow.log_dict([c.to_json() for c in found], "comparisons.json")
        # what `casdm report compare RUN_ID ...` reads back: the rows as metrics/leaderboard.json holds them, the params
        mlflow.log_dict({r["model"]: {k: v for k, v in r.items() if k != "model"} for r in table}, "leaderboard_rows.json")
        mlflow.log_dict(params.model_dump(mode="json"), "params.json")
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
         "delta_rare_mdice": "Δ rare mDice", "vs_control_miou": "Δ mIoU vs control",
         "vs_control_rare_miou": "Δ rare mIoU vs control", "maps_adherence": "maps adherence"}


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
