"""What every command module shares: the consoles, the error exit, reading params.yaml.

Every DVC stage's paths arrive as options its ``dvc.yaml`` command passes (``required``: dvc.yaml is
the one place a stage's paths are written); values come from params.yaml.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

# Rich wraps at 80 columns when not on a terminal (DVC logs, CI); tables read better wider.
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
PARAMS = typer.Option(Path("params.yaml"), "--params", help="parameters file")
ERRORS = (ValueError, FileNotFoundError, RuntimeError)  # what a stage reports as a one-line error


def path_option(text: str):
    """A path a stage reads or writes, passed by its dvc.yaml command."""
    return typer.Option(..., help=text)


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def or_fail(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a stage's expected errors (a bad value, a missing file, a non-finite loss,
    a bad prompt: all ``ERRORS``) end the command with their message instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except ERRORS as exc:
        fail(str(exc))


def read_params(path: Path, model: str | None = None):
    """The validated params; with ``model``, that name checked against its ``models:`` section."""
    from benchmark.config import ConfigError, load_params

    try:
        p = load_params(path)
    except ConfigError as exc:
        fail(str(exc))
    if model is not None and model not in p.models:
        fail(f"unknown model {model!r}; params.yaml models: {', '.join(p.models)}")
    return p
