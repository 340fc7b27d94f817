"""``casdm evaluate ...`` (the evaluation stages) and ``casdm leaderboard`` (show; ``build`` = the stage)."""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from benchmark.commands.common import (JSON, PARAMS, console, err, fail, need_tracking, or_fail, path_option,
                                       print_json, read_params)

evaluate_app = typer.Typer(help="Evaluation stages: real features, real-only row, one model's row, the "
                           "generated-maps row.", no_args_is_help=True)
leaderboard_app = typer.Typer(help="Print the latest leaderboard from MLflow; `build` is the DVC stage.")
DATA = path_option("the prepared dataset")
JUDGE = path_option("the semantic-fidelity judge (evaluate-real writes it)")
METRICS = path_option("the row's metrics JSON")
PLOT = path_option("the row's per-class CSV")
FEATURES = path_option("folder of the real test-image features")


@evaluate_app.command("features")
def evaluate_features(params: Path = PARAMS, data: Path = DATA,
                      out: Path = FEATURES) -> None:
    """Features of the real test images (cached per dataset version and extractor)."""
    from benchmark.stages.evaluate import real_features

    meta = or_fail(real_features, read_params(params), data, out)
    console.print(f"{meta['images']} real test images, {meta['extractor']} ({meta['dims']}-d) -> {out}")


@evaluate_app.command("real")
def evaluate_real_cmd(params: Path = PARAMS, data: Path = DATA, features: Path = FEATURES, judge: Path = JUDGE,
                      metrics: Path = METRICS, plot: Path = PLOT) -> None:
    """The real-only row: the semantic-fidelity judge, downstream segmenters on real images, and the
    image-quality floor (real training against test images)."""
    from benchmark.stages.evaluate import evaluate_real

    r = or_fail(evaluate_real, read_params(params), data, features, judge, metrics, plot, log=err.print)
    console.print(f"real only: downstream mIoU {r.downstream.miou:.3f}, judge on real test images "
                  f"mIoU {r.semantic.miou:.3f}")


@evaluate_app.command("control")
def evaluate_control_cmd(params: Path = PARAMS, data: Path = DATA, metrics: Path = METRICS, plot: Path = PLOT) -> None:
    """The size-matched control row: real + the real images of the training maps the models draw from."""
    from benchmark.stages.evaluate import evaluate_control

    r = or_fail(evaluate_control, read_params(params), data, metrics, plot, log=err.print)
    console.print(f"real + control: downstream mIoU {r.downstream.miou:.3f}, rare mIoU "
                  f"{r.downstream.rare_miou}")


@evaluate_app.command("model")
def evaluate_model_cmd(name: str = typer.Argument(..., help="model name"), params: Path = PARAMS, data: Path = DATA,
                       samples: Path = path_option("the model's sample folder"),
                       features: Path = FEATURES, judge: Path = JUDGE, metrics: Path = METRICS, plot: Path = PLOT) -> None:
    """One model's row: FID/KID, semantic fidelity, downstream with its synthetic pairs."""
    from benchmark.stages.evaluate import evaluate_model

    p = read_params(params, name)
    r = or_fail(evaluate_model, p, name, data, samples, features, judge, metrics, plot, log=err.print)
    console.print(f"{name}: FID {r.quality.fid:.2f} ({r.quality.extractor}), semantic mIoU "
                  f"{r.semantic.miou:.3f}, downstream mIoU {r.downstream.miou:.3f}")


@evaluate_app.command("maps")
def evaluate_maps_cmd(params: Path = PARAMS, data: Path = DATA,
                      samples: Path = path_option("the maps stage's folder (generated maps and images)"),
                      judge: Path = JUDGE, metrics: Path = METRICS, plot: Path = PLOT) -> None:
    """The "real + generated maps" row: downstream with the map generator's pairs, judge on its images."""
    from benchmark.stages.evaluate import evaluate_maps

    r = or_fail(evaluate_maps, read_params(params), data, samples, judge, metrics, plot, log=err.print)
    console.print(f"{r.model}: downstream mIoU {r.downstream.miou:.3f}, rare mIoU "
                  f"{r.downstream.rare_miou}, judge mIoU {r.semantic.miou:.3f}")


@leaderboard_app.callback(invoke_without_command=True)
def leaderboard_show(ctx: typer.Context, params: Path = PARAMS,
                     full: bool = typer.Option(False, "--full", help="every column, deltas included"),
                     as_json: bool = JSON) -> None:
    """Print the newest leaderboard run's table from MLflow."""
    if ctx.invoked_subcommand is not None:
        return
    from benchmark.stages.leaderboard import latest_table
    from benchmark.report.tables import rich_table

    p = read_params(params)
    try:
        run_id, columns, table = or_fail(latest_table, p)  # a tracking store that cannot be used: one line
    except LookupError as exc:
        fail(str(exc))
    if as_json:
        print_json({"run_id": run_id, "rows": [row.flat(columns) for row in table]})
        return
    Console(width=None if sys.stdout.isatty() else 200).print(rich_table(p.leaderboard.primary, run_id, columns,
                                                                         table, full))
    import mlflow

    from benchmark.tracking import tracking_uri, ui_url

    err.print(f"in MLflow's UI: {ui_url(tracking_uri(p.tracking), mlflow.get_run(run_id).info.experiment_id, run_id)}",
              soft_wrap=True, highlight=False)


@leaderboard_app.command("build")
def leaderboard_build(params: Path = PARAMS, rows: Path = path_option("folder of the rows' metrics JSON"),
                      train_metrics: Path = path_option("folder of the models' training metrics JSON"),
                      metrics: Path = path_option("the leaderboard JSON: every column, interval and verdict"),
                      headline: Path = path_option("model x the headline scores, numbers only (dvc metrics show)"),
                      comparisons: Path = path_option("every comparison's interval and verdict, JSON"),
                      plots: Path = path_option("folder of the leaderboard's plot CSVs"),
                      report: Path = path_option("the markdown leaderboard"),
                      seed_spread: Path | None = typer.Option(None, help="a multi-seed run's comparisons.json: its "
                                                              "seed-to-seed spread is shown beside one-seed differences"),
                      mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow")) -> None:
    """The DVC stage: gather the rows' metrics into metrics, plots, a report and MLflow."""
    from benchmark.stages.leaderboard import load_rows, log_mlflow, write_outputs

    p = read_params(params)
    if mlflow_log:
        need_tracking(p)
    loaded = or_fail(load_rows, rows, p, train_metrics)
    table, found = or_fail(write_outputs, p, loaded, metrics, plots, report, comparisons, seed_spread, headline)
    if mlflow_log:
        err.print(f"MLflow leaderboard run: {or_fail(log_mlflow, p, table, loaded, report, found)}", soft_wrap=True,
                  highlight=False)
    console.print(report.read_text(), markup=False, highlight=False)
