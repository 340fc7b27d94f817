"""``casdm report build`` (the report stage: reports/index.html, report.md, assets/) and ``casdm report
compare A B`` (two states side by side)."""
from __future__ import annotations

from pathlib import Path

import typer

from benchmark.commands.common import PARAMS, console, err, need_tracking, or_fail, path_option, read_params

report_app = typer.Typer(help="Comparison reports: build the report stage's page; compare two states.",
                         no_args_is_help=True)


@report_app.command("build")
def report_build(params: Path = PARAMS,
                 leaderboard: Path = path_option("the leaderboard metrics JSON"),
                 comparisons: Path = path_option("the leaderboard's comparisons JSON"),
                 rows: Path = path_option("folder of the rows' metrics JSON"),
                 train_metrics: Path = path_option("folder of the training metrics JSON"),
                 sample_metrics: Path = path_option("folder of the sampling metrics JSON"),
                 train_plots: Path = path_option("folder of the loss-curve CSVs"),
                 samples: Path = path_option("folder of every model's samples"),
                 models: Path = path_option("folder of the trained pipelines (their last_grid.png)"),
                 data: Path = path_option("the prepared dataset"),
                 maps: Path = path_option("the maps stage's metrics JSON"),
                 studies: Path = path_option("folder of the default study storage (study.storage: null)"),
                 lock: Path = typer.Option(Path("dvc.lock"), help="dvc.lock, hashed into the protocol card"),
                 out: Path = path_option("the report folder"),
                 mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow",
                                                 help="log the report to the matching MLflow leaderboard run")) -> None:
    """The report stage: one self-contained HTML page and its Markdown twin."""
    from benchmark.report.build import build
    from benchmark.report.inputs import ReportPaths

    p = read_params(params)
    if mlflow_log:
        need_tracking(p)
    paths = ReportPaths(leaderboard=leaderboard, comparisons=comparisons, rows=rows, train_metrics=train_metrics,
                        sample_metrics=sample_metrics, train_plots=train_plots, samples=samples, models=models,
                        data=data, maps=maps, studies=studies, lock=lock, params=params)
    r = or_fail(build, p, paths, out)
    for part, why in r["skipped"].items():
        err.print(f"[yellow]{part}: skipped, {why}[/]")
    console.print(f"report: {out / 'index.html'} ({r['sizes']['index.html']:,} bytes), {out / 'report.md'} + "
                  f"{r['sizes']['assets']:,} bytes of assets, built in {r['seconds']:.1f} s")
    if mlflow_log:
        from benchmark.report.mlflow_log import log_report

        run = or_fail(log_report, p, out, r["headline"])
        err.print(f"MLflow: report logged to leaderboard run {run}" if run else
                  "[yellow]MLflow: no leaderboard run with these params; report not logged[/]")


@report_app.command("compare")
def report_compare(a: str = typer.Argument(..., help="workspace | git revision | DVC experiment | MLflow run id"),
                   b: str = typer.Argument(..., help="the other state, named the same ways"),
                   params: Path = PARAMS,
                   out: Path = typer.Option(Path("reports/compare"), help="folder of the comparison page")) -> None:
    """Two states of the suite side by side: metrics with deltas, params that differ, samples."""
    import time

    from benchmark.report.build import write
    from benchmark.report.compare import compare

    p = read_params(params)
    ctx, assets = or_fail(compare, a, b, Path.cwd(), p.tracking)
    ctx.update(title=p.report.title, generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    sizes = or_fail(write, out, ctx, assets, "compare.html.j2", "compare.md.j2")
    console.print(f"compare {a} vs {b}: {len(ctx['metrics'])} values, {len(ctx['params'])} params differ -> "
                  f"{out / 'index.html'} ({sizes['index.html']:,} bytes)")
