"""``casdm data ...`` (generate, validate, prepare a dataset) and ``casdm params ...`` (check, profile)."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from benchmark.commands.common import (
    PARAMS,
    console,
    err,
    fail,
    or_fail,
    os_error,
    path_option,
    read_params,
)

data_app = typer.Typer(help="Datasets: generate, validate, prepare.", no_args_is_help=True)
params_app = typer.Typer(help="params.yaml: check, apply a profile.", no_args_is_help=True)


@params_app.command("check")
def params_check(params: Path = PARAMS) -> None:
    """Validate params.yaml (every model's training block by its kind) and print its sections."""
    from benchmark.kinds.registry import model_options

    p = read_params(params)
    from benchmark.stages.mapgen import generator_options

    try:
        for name in p.models:
            options = model_options(p, name)
            boost = getattr(options, "ca_boost", None)
            if boost and p.data.source != "folder":  # a folder dataset names its classes in its classes.json
                from benchmark.data.classes import CHOLECSEG8K
                from casdm.objective import class_boost

                try:
                    class_boost(CHOLECSEG8K.names, boost)
                except ValueError as exc:
                    raise ValueError(f"params.yaml: models.{name}.training.ca_boost: {exc}") from None
        generator_options(p)
    except ValueError as exc:  # the kinds' checks say "params.yaml:"; the file checked may be another
        fail(f"{params}: {str(exc).removeprefix('params.yaml: ')}")
    console.print(f"[green]{params}: valid[/] (preset {p.train.preset}, {p.data.resolution} px, "
                  f"models {', '.join(p.models)})")


@params_app.command("profile")
def params_profile(name: str = typer.Argument(None, help="a profile; none: list them"), params: Path = PARAMS,
                   list_: bool = typer.Option(False, "--list", help="list the profiles and change nothing")) -> None:
    """Merge benchmark/config/profiles/NAME.yaml into params.yaml (e.g. ``tiny`` for tests and CI);
    without NAME (or with --list), list the profiles with the first line of each one's header."""
    from benchmark.config import PROFILES_DIR, ConfigError, apply_profile

    if name is None or list_:
        for f in sorted(PROFILES_DIR.glob("*.yaml")):
            first = next((ln.lstrip("# ").strip() for ln in f.read_text().splitlines() if ln.startswith("#")), "")
            console.print(f"{f.stem:10s} {first}", highlight=False, soft_wrap=True)
        return
    try:
        apply_profile(name, params)
    except ConfigError as exc:
        fail(str(exc))
    console.print(f"[green]applied profile {name} to {params}[/]")


@data_app.command("synth")
def data_synth(params: Path = PARAMS, out: Path = path_option("folder the dataset is written to")) -> None:
    """Generate the synthetic laparoscopic dataset (CholecSeg8K layout) from data.synthetic."""
    from benchmark.data.synthetic import generate

    cfg = read_params(params).data.synthetic
    n = or_fail(generate, cfg, out)
    console.print(f"wrote {n} synthetic frames to {out}")


@data_app.command("prepare")
def data_prepare(params: Path = PARAMS, out: Path = path_option("the prepared dataset folder"),
                 metrics: Path = path_option("coverage metrics JSON")) -> None:
    """Split, resize and count the dataset named by data.source / data.root."""
    from rich.progress import Progress

    from benchmark.data.prepare import coverage_table, prepare
    from benchmark.data.sources import DatasetError

    cfg = read_params(params).data
    try:
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("preparing", total=None)
            stats = prepare(cfg, out, metrics, progress=lambda: bar.advance(task))
    except DatasetError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(os_error(exc))
    console.print(coverage_table(stats))
    for split, missing in stats["missing"].items():
        if missing:
            err.print(f"[yellow]warning:[/] split {split!r} has no frame of {', '.join(missing)}; "
                      "its per-class scores there will be reported as absent", highlight=False)


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
