"""What every command module shares: the consoles, the error exit, reading params.yaml.

Every DVC stage's paths arrive as options its ``dvc.yaml`` command passes (``required``: dvc.yaml is
the one place a stage's paths are written); values come from params.yaml.
"""
from __future__ import annotations

import errno
import sys
from pathlib import Path

import typer
from rich.console import Console

# Rich wraps at 80 columns when not on a terminal (DVC logs, CI); tables read better wider.
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
PARAMS = typer.Option(Path("params.yaml"), "--params", help="parameters file")
SEED = typer.Option(None, "--seed", help="the training seed (one of params.yaml train.seeds; default: the first)")
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
    except OSError as exc:
        fail(os_error(exc))


def os_error(exc: OSError) -> str:
    """A full disk, a read-only folder, a missing permission: the message names the file."""
    where = exc.filename or "a file"
    hint = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EFBIG: "the file size limit is reached", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "not permitted"}.get(exc.errno, exc.strerror or str(exc))
    return (f"{where}: {hint} ({exc.strerror or exc}); nothing was published: the stage's outputs are as "
            "before, re-run it when the cause is fixed")


def need_tracking(params) -> None:
    """A stage that logs to MLflow checks the tracking server first, before it writes anything."""
    from benchmark.tracking import check_server, tracking_uri

    or_fail(check_server, tracking_uri(params.tracking))


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


def with_seed(params, seed: int | None):
    """The params of one training seed's run (``--seed``): ``train.seed`` set, checked against ``train.seeds``."""
    if seed is None:
        return params
    if seed not in params.train.seeds:
        fail(f"--seed {seed}: not one of params.yaml train.seeds {params.train.seeds}")
    return params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})


JSON = typer.Option(False, "--json", help="print the result as JSON on stdout (for scripts), nothing else")


def print_json(value) -> None:
    """One JSON document on stdout: no colours, no wrapping, NaN written as null."""
    import json
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    sys.stdout.write(json.dumps(clean(value), indent=2, default=str) + "\n")
