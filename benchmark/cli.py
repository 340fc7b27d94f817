"""The ``casdm`` command. Each DVC stage is one sub-command that calls one function.

Heavy libraries (torch, diffusers, smp) are imported inside the commands, so ``casdm --help`` and
the data commands start quickly.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="casdm-bench: mask-conditioned surgical image synthesis benchmark.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: generate, validate, prepare.", no_args_is_help=True)
params_app = typer.Typer(help="params.yaml: check, apply a profile.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(params_app, name="params")
evaluate_app = typer.Typer(help="Evaluation stages: real features, real-only row, one model's row.",
                           no_args_is_help=True)
leaderboard_app = typer.Typer(help="Print the latest leaderboard from MLflow; `build` is the DVC stage.")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(leaderboard_app, name="leaderboard")
study_app = typer.Typer(help="Optuna loss-weight studies: run (or resume), show, best.", no_args_is_help=True)
app.add_typer(study_app, name="study")
STORAGE = typer.Option(None, "--storage", help="Optuna storage URL (sqlite:///..., postgresql://..., "
                       "journal:<file>); default study.storage, else sqlite:///runs/studies/<name>.db")

# Rich wraps at 80 columns when not on a terminal (DVC logs, CI); tables read better wider.
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
PARAMS = typer.Option(Path("params.yaml"), "--params", help="parameters file")


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _params(path: Path):
    from benchmark.config import ConfigError, load_params

    try:
        return load_params(path)
    except ConfigError as exc:
        fail(str(exc))


def _model_params(path: Path, name: str):
    """The validated params, with ``name`` checked against its ``models:`` section."""
    p = _params(path)
    if name not in p.models:
        fail(f"unknown model {name!r}; params.yaml models: {', '.join(p.models)}")
    return p


@params_app.command("check")
def params_check(params: Path = PARAMS) -> None:
    """Validate params.yaml and print its sections."""
    p = _params(params)
    console.print(f"[green]{params}: valid[/] (preset {p.train.preset}, {p.data.resolution} px, "
                  f"models {', '.join(p.models)})")


@params_app.command("profile")
def params_profile(name: str, params: Path = PARAMS) -> None:
    """Merge benchmark/profiles/NAME.yaml into params.yaml (e.g. ``tiny`` for tests and CI)."""
    from benchmark.config import ConfigError, apply_profile

    try:
        apply_profile(name, params)
    except ConfigError as exc:
        fail(str(exc))
    console.print(f"[green]applied profile {name} to {params}[/]")


@data_app.command("synth")
def data_synth(params: Path = PARAMS, out: Path = typer.Option(Path("data/raw/synthetic"))) -> None:
    """Generate the synthetic laparoscopic dataset (CholecSeg8K layout) from data.synthetic."""
    from benchmark.data.synthetic import SyntheticSpec, generate

    cfg = _params(params).data.synthetic
    n = generate(SyntheticSpec(**cfg.model_dump()), out)
    console.print(f"wrote {n} synthetic frames to {out}")


@data_app.command("prepare")
def data_prepare(params: Path = PARAMS, out: Path = typer.Option(Path("data/prepared")),
                 metrics: Path = typer.Option(Path("metrics/data.json"))) -> None:
    """Split, resize and count the dataset named by data.source / data.root."""
    from rich.progress import Progress

    from benchmark.data.prepare import prepare
    from benchmark.data.sources import DatasetError

    cfg = _params(params).data
    try:
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("preparing", total=None)
            stats = prepare(cfg, out, metrics, progress=lambda: bar.advance(task))
    except DatasetError as exc:
        fail(str(exc))
    _coverage_table(stats)
    for split, missing in stats["missing"].items():
        if missing:
            err.print(f"[yellow]warning:[/] split {split!r} has no frame of {', '.join(missing)}; "
                      "its per-class scores there will be reported as absent", highlight=False)


def _coverage_table(stats: dict) -> None:
    splits = stats["splits"]
    t = Table(title=f"class coverage ({stats['resolution']} px, {stats['split']['kind']} split)")
    t.add_column("class")
    for s in splits:
        t.add_column(f"{s} frames ({splits[s]['frames']})", justify="right")
        t.add_column(f"{s} pixel %", justify="right")
    names = list(next(iter(splits.values()))["class_frames"])
    for n in names:
        row = [n]
        for s in splits:
            k = splits[s]["class_frames"][n]
            row += [str(k) if k else "[red]0[/]", f"{100 * splits[s]['class_pixel_share'][n]:.2f}"]
        t.add_row(*row)
    console.print(t)


@data_app.command("validate")
def data_validate(source: str = typer.Option(..., help="cholecseg8k | folder"),
                  root: Path = typer.Option(..., help="dataset root")) -> None:
    """Check every frame of a dataset; print frames, videos and per-class frame counts."""
    from benchmark.data.sources import DatasetError, open_source, validate

    if source not in ("cholecseg8k", "folder"):
        fail(f"--source {source!r}: expected cholecseg8k or folder")
    try:
        ds = open_source(source, root)
    except DatasetError as exc:
        fail(str(exc))
    report = validate(ds)
    console.print(f"{root}: {report.frames} frames, {len(report.videos)} videos", soft_wrap=True)
    t = Table()
    t.add_column("id", justify="right")
    t.add_column("class")
    t.add_column("frames", justify="right")
    t.add_column("% frames", justify="right")
    for c in ds.table.classes:
        k = report.class_frames.get(c.id, 0)
        t.add_row(str(c.id), c.name + (" (rare)" if c.rare else ""), str(k), f"{100 * k / report.frames:.1f}")
    console.print(t)
    if report.strays:
        total = {}
        for d in report.strays.values():
            for code, px in d.items():
                total[code] = total.get(code, 0) + px
        console.print(f"[yellow]stray codes mapped to ignore[/] in {len(report.strays)} files: "
                      + ", ".join(f"{c}: {px} px" for c, px in sorted(total.items())))
        for path, d in list(report.strays.items())[:20]:
            console.print(f"  {path}: " + ", ".join(f"{c}: {px} px" for c, px in sorted(d.items())),
                          highlight=False, soft_wrap=True)
    if report.errors:
        for e in report.errors:
            err.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
        fail(f"{len(report.errors)} problem(s) in {root}")
    console.print(f"[green]{root}: valid[/]", soft_wrap=True)


@app.command("train")
def train_cmd(name: str = typer.Argument(..., help="model name (a key of params.yaml models)"),
              params: Path = PARAMS, data: Path = typer.Option(Path("data/prepared"))) -> None:
    """Train one model; re-running resumes from its last checkpoint."""
    from casdm.train import NonFiniteLoss, RunPaths, train

    p = _model_params(params, name)
    paths = RunPaths(data=data, checkpoints=Path("runs") / name / "checkpoints", model=Path("models") / name,
                     metrics=Path("metrics/train") / f"{name}.json", plot=Path("plots/train") / f"{name}.csv")
    try:
        m = train(p, name, paths, console=err)
    except (NonFiniteLoss, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"{name}: {m['steps']} steps, loss {m['first_loss']:.4g} -> {m['final_loss']:.4g}, "
                  f"{m['s_per_step']:.3f} s/step, {m['num_parameters'] / 1e6:.2f} M parameters")


@app.command("sample")
def sample_cmd(name: str = typer.Argument(..., help="model name"), params: Path = PARAMS,
               data: Path = typer.Option(Path("data/prepared"))) -> None:
    """Generate one image per test map with a trained model."""
    from casdm.sample import sample

    p = _model_params(params, name)
    try:
        r = sample(p, name, Path("models") / name, data, Path("samples") / name, Path("metrics/sample") / f"{name}.json")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"{name}: {r['images']} images, {r['s_per_image']:.3f} s/image ({r['scheduler']}, "
                  f"{r['num_inference_steps']} steps)")


EVAL_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


@evaluate_app.command("features")
def evaluate_features(params: Path = PARAMS, data: Path = typer.Option(Path("data/prepared")),
                      out: Path = typer.Option(Path("features/real"))) -> None:
    """Features of the real test images (cached per dataset version and extractor)."""
    from benchmark.evaluate import real_features

    try:
        meta = real_features(_params(params), data, out)
    except EVAL_ERRORS as exc:
        fail(str(exc))
    console.print(f"{meta['images']} real test images, {meta['extractor']} ({meta['dims']}-d) -> {out}")


@evaluate_app.command("real")
def evaluate_real_cmd(params: Path = PARAMS, data: Path = typer.Option(Path("data/prepared"))) -> None:
    """The real-only row: the semantic-fidelity judge and downstream segmenters on real images."""
    from benchmark.evaluate import evaluate_real

    try:
        r = evaluate_real(_params(params), data, Path("segmenters/judge"), Path("metrics/evaluate/real.json"),
                          Path("plots/evaluate/real.csv"), log=err.print)
    except EVAL_ERRORS as exc:
        fail(str(exc))
    console.print(f"real only: downstream mIoU {r['downstream']['miou']:.3f}, judge on real test images "
                  f"mIoU {r['semantic']['miou']:.3f}")


@evaluate_app.command("model")
def evaluate_model_cmd(name: str = typer.Argument(..., help="model name"), params: Path = PARAMS,
                       data: Path = typer.Option(Path("data/prepared"))) -> None:
    """One model's row: FID/KID, semantic fidelity, downstream with its synthetic pairs."""
    from benchmark.evaluate import evaluate_model

    p = _model_params(params, name)
    try:
        r = evaluate_model(p, name, data, Path("samples") / name, Path("features/real"), Path("segmenters/judge"),
                           Path("metrics/evaluate") / f"{name}.json", Path("plots/evaluate") / f"{name}.csv",
                           log=err.print)
    except EVAL_ERRORS as exc:
        fail(str(exc))
    console.print(f"{name}: FID {r['quality']['fid']:.2f} ({r['quality']['extractor']}), semantic mIoU "
                  f"{r['semantic']['miou']:.3f}, downstream mIoU {r['downstream']['miou']:.3f}")


@leaderboard_app.callback(invoke_without_command=True)
def leaderboard_show(ctx: typer.Context, params: Path = PARAMS,
                     full: bool = typer.Option(False, "--full", help="every column, deltas included")) -> None:
    """Print the newest leaderboard run's table from MLflow."""
    if ctx.invoked_subcommand is not None:
        return
    from benchmark.leaderboard import display_columns, fmt, latest_table

    p = _params(params)
    try:
        run_id, df = latest_table(p)
    except LookupError as exc:
        fail(str(exc))
    columns = [c for c in df.columns if c != "run_id"]
    short = {"semantic_miou": "semantic mIoU", "semantic_rare_miou": "semantic rare mIoU",
             "downstream_miou": "mIoU", "downstream_mdice": "mDice", "downstream_rare_miou": "rare mIoU",
             "downstream_rare_mdice": "rare mDice", "delta_miou": "Δ mIoU", "delta_rare_miou": "Δ rare mIoU",
             "delta_mdice": "Δ mDice", "delta_rare_mdice": "Δ rare mDice", "maps_adherence": "maps adherence"}
    shown = [c for c in display_columns(columns) if full or c in ("model", "role") or c.startswith(("fid:", "kid:"))
             or c in short and "mdice" not in c.removeprefix("downstream_") or c == "downstream_mdice"]
    extractors = sorted({c.split(":", 1)[1] for c in shown if c.startswith("fid:")})
    t = Table(title=f"leaderboard (MLflow run {run_id[:8]}, sorted by {p.leaderboard.primary}); "
                    f"FID/KID features: {', '.join(extractors) or '-'}; downstream: mean ± std over seeds")
    for c in shown:
        label = c.split(":")[0].upper() + (f" [{extractors.index(c.split(':', 1)[1]) + 1}]" if len(extractors) > 1
                                            else "") if c.startswith(("fid:", "kid:")) else short.get(c, c)
        names = [str(v) for v in df[c]] if c in ("model", "role") else []
        t.add_column(label, justify="left" if names else "right", no_wrap=True,
                     min_width=max(map(len, names), default=None))  # names are never cut short
    for rec in df.to_dict("records"):
        rec = {k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}
        t.add_row(*[fmt(rec, c) for c in shown])
    Console(width=None if sys.stdout.isatty() else 200).print(t)


@leaderboard_app.command("build")
def leaderboard_build(params: Path = PARAMS, mlflow_log: bool = typer.Option(True, "--mlflow/--no-mlflow")) -> None:
    """The DVC stage: gather metrics/evaluate/*.json into metrics, plots, a report and MLflow."""
    from benchmark.leaderboard import load_rows, log_mlflow, write_outputs

    p = _params(params)
    try:
        rows = load_rows(Path("metrics/evaluate"), p)
        table = write_outputs(p, rows, Path("metrics/leaderboard.json"), Path("plots/leaderboard"),
                              Path("reports/leaderboard.md"))
    except EVAL_ERRORS as exc:
        fail(str(exc))
    if mlflow_log:
        run_id = log_mlflow(p, table, rows, Path("reports/leaderboard.md"))
        err.print(f"MLflow leaderboard run {run_id}")
    console.print(Path("reports/leaderboard.md").read_text(), markup=False, highlight=False)


@study_app.command("run")
def study_run(params: Path = PARAMS, storage: str = STORAGE, data: Path = typer.Option(Path("data/prepared")),
              n_trials: int = typer.Option(None, "--n-trials", help="finished trials wanted (default study.n_trials)"),
              judge: Path = typer.Option(Path("segmenters/judge"), help="the semantic-fidelity judge")) -> None:
    """Run the study in params.yaml's `study:` section; the same command resumes it. Start it in
    several shells (journal or PostgreSQL storage) for several workers."""
    from benchmark.study import run_study

    p = _params(params)
    try:
        study = run_study(p, data, judge, storage, n_trials, log=err.print)
    except EVAL_ERRORS as exc:
        fail(str(exc))
    _trials_table(study, p)


def _study(params: Path, storage: str | None):
    import optuna

    from benchmark.study import storage_for

    p = _params(params)
    try:
        return p, optuna.load_study(study_name=p.study.name, storage=storage_for(p, storage))
    except KeyError:
        fail(f"no study named {p.study.name!r} in {storage or p.study.storage or 'the default storage'}; "
             "run `casdm study run` first")


def _trials_table(study, p) -> None:
    t = Table(title=f"study {study.study_name}: {len(study.trials)} trials")
    for c in ("#", "state", *p.study.objectives, "params", "note"):
        t.add_column(c, justify="right" if c in ("#", *p.study.objectives) else "left")
    for tr in study.trials:
        values = [f"{v:.4g}" for v in tr.values] if tr.values else ["-"] * len(p.study.objectives)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in tr.params.items())
        note = tr.user_attrs.get("fail_reason") or tr.system_attrs.get("fail_reason", "")
        if tr.state.name == "PRUNED" and tr.intermediate_values:
            note = f"pruned at step {max(tr.intermediate_values)}"
        t.add_row(str(tr.number), tr.state.name, *values, shown, note[:80])
    console.print(t)


@study_app.command("show")
def study_show(params: Path = PARAMS, storage: str = STORAGE) -> None:
    """Every trial: state, objective values, parameters, why it failed or was pruned."""
    p, study = _study(params, storage)
    _trials_table(study, p)


@study_app.command("best")
def study_best(params: Path = PARAMS, storage: str = STORAGE,
               trial: int = typer.Option(None, "--trial", help="a Pareto-optimal trial to take (several objectives)"),
               write_params: bool = typer.Option(False, "--write-params",
                                                 help="write its values into params.yaml's tuned model")) -> None:
    """The best trial (or the Pareto front); with --write-params, into params.yaml for `dvc repro`."""
    from benchmark.config import ConfigError
    from benchmark.study import pick_best, write_best

    p, study = _study(params, storage)
    try:
        best = pick_best(study, p, trial)
    except LookupError as exc:
        fail(str(exc))
    if len(p.study.objectives) > 1:
        console.print("Pareto front: " + "; ".join(f"trial {t.number}: {dict(zip(p.study.objectives, t.values))}"
                                                   for t in study.best_trials), soft_wrap=True)
    console.print(f"trial {best.number}: {dict(zip(p.study.objectives, best.values))}", soft_wrap=True)
    console.print(f"models.{p.study.model}.training: {best.user_attrs['training']}", soft_wrap=True)
    if write_params:
        try:
            write_best(p, best, params)
        except ConfigError as exc:
            fail(str(exc))
        console.print(f"[green]wrote trial {best.number}'s values into {params}[/]; `dvc repro` trains the tuned model")


@evaluate_app.command("maps")
def evaluate_maps_cmd(params: Path = PARAMS, data: Path = typer.Option(Path("data/prepared"))) -> None:
    """The "real + generated maps" row: downstream with the map generator's pairs, judge on its images."""
    from benchmark.evaluate import evaluate_maps

    try:
        r = evaluate_maps(_params(params), data, Path("samples/maps"), Path("segmenters/judge"),
                          Path("metrics/evaluate/maps.json"), Path("plots/evaluate/maps.csv"), log=err.print)
    except EVAL_ERRORS as exc:
        fail(str(exc))
    console.print(f"{r['model']}: downstream mIoU {r['downstream']['miou']:.3f}, rare mIoU "
                  f"{r['downstream']['rare_miou']}, judge mIoU {r['semantic']['miou']:.3f}")


from benchmark.cli_maps import maps_app  # noqa: E402  (it imports the helpers above)

app.add_typer(maps_app, name="maps")

if __name__ == "__main__":
    app()
