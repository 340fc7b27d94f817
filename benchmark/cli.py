"""The ``casdm`` command. Each DVC stage is one sub-command that calls one function, with values from
params.yaml and paths from its dvc.yaml command line.

Heavy libraries (torch, diffusers, smp) are imported inside the commands, so ``casdm --help`` and
the data commands start quickly. The commands live in ``benchmark/commands/``, one module a group.
"""
from __future__ import annotations

import os

import typer

from benchmark.commands.data import data_app, params_app
from benchmark.commands.evaluate import evaluate_app, leaderboard_app
from benchmark.commands.maps import maps_app
from benchmark.commands.models import sample_cmd, train_cmd
from benchmark.commands.report import report_app
from benchmark.commands.study import study_app

app = typer.Typer(help="casdm-bench: mask-conditioned surgical image synthesis benchmark.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")
app.add_typer(params_app, name="params")
app.command("train")(train_cmd)
app.command("sample")(sample_cmd)
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(study_app, name="study")
app.add_typer(maps_app, name="maps")
app.add_typer(report_app, name="report")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from benchmark.provenance import git_commit

        typer.echo(f"casdm-bench {version('casdm-bench')} (commit {git_commit()})")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="the installed version and the checkout's commit")) -> None:
    """casdm-bench: mask-conditioned surgical image synthesis benchmark."""
    # MLflow draws a progress bar on stderr for every artifact it downloads (casdm leaderboard, report compare):
    # it lands between the tables and in DVC's logs. Off unless the user's environment says otherwise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")



def main() -> None:
    """The ``casdm`` entry point. SIGTERM (what ``kill``, DVC's and CI's time-outs send) is raised as
    KeyboardInterrupt, like Ctrl-C, so a stage stopped that way still removes its temp folder and
    marks its MLflow run KILLED; only ``kill -9`` skips that, and the next start cleans up after it."""
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)
    app()


if __name__ == "__main__":
    main()
