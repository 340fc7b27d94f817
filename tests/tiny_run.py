"""The tiny profile's `dvc repro`, built once per test session and shared by every check that reads it.

The build is a chain of 25 stage processes (~5 min on 2 cores, most of it each process importing torch,
diffusers and MLflow), so it starts as early as it can and beside the other tests: under pytest-xdist the
controller starts it in a thread as soon as the workers' collection shows a test that needs it
(``conftest.pytest_xdist_node_collection_finished``), and keeps its MLflow server up until the session
ends; with ``-n 0`` the first test that needs it builds it in its own process. Workers find it through
marker files in the controller's base temp folder. The checks that only read it share one private copy
(``clone``); each check that kills stages or changes params has a copy and an MLflow experiment of its
own, so none changes what another one reads."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, cli_env
from tests.mlflow_server import mlflow_server

WAIT_S = 3600  # the build is ~5 min alone; beside two busy workers, up to ~3x that


@dataclass
class TinyRun:
    repo: Path
    env: dict

    def run(self, *args, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=kw.pop("cwd", self.repo), env=env or self.env, capture_output=True,
                              text=True, **kw)

    def dvc(self, *args, env: dict | None = None) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, env=env)

    def git(self, *args, cwd: Path | None = None) -> None:
        out = self.run("git", "-c", "user.name=t", "-c", "user.email=t@t", *args, cwd=cwd or self.repo)
        assert out.returncode == 0, out.stderr


def _publish(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class TinyBuild:
    """Builds the tiny run under ``root`` in a thread and serves its MLflow records until ``stop``.
    ``root/uri`` names the server once it is up; ``root/done`` or ``root/failed`` (with the reason)
    appear when the build ends."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root, self.extra_env = root, env or {}
        self.finish = threading.Event()
        self.thread = threading.Thread(target=self._build, name="tiny-build", daemon=True)

    def start(self) -> "TinyBuild":
        self.root.mkdir(parents=True, exist_ok=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.finish.set()
        self.thread.join(timeout=120)

    def _build(self) -> None:
        from benchmark.provenance import copy_project

        try:
            repo = copy_project(REPO, self.root / "repo")
            with mlflow_server(self.root) as uri:
                env = {**cli_env(), **self.extra_env, "MLFLOW_TRACKING_URI": uri}
                run = lambda *a: subprocess.run(a, cwd=repo, env=env, capture_output=True, text=True)
                for out in (run("casdm", "params", "profile", "tiny"), run("dvc", "repro")):
                    with (self.root / "build.log").open("a") as log:
                        log.write(out.stdout + out.stderr)
                    if out.returncode != 0:
                        _publish(self.root / "failed", f"`{' '.join(out.args)}` exited {out.returncode}:\n"
                                                        f"{(out.stdout + out.stderr)[-4000:]}")
                        return
                _publish(self.root / "uri", uri)
                _publish(self.root / "done", "")
                self.finish.wait()
        except BaseException:
            _publish(self.root / "failed", traceback.format_exc())


def wait_for(root: Path, timeout: float = WAIT_S) -> tuple[Path, str]:
    """The built repo (read it, never change it) and its server's URI, once the build is done."""
    deadline = time.monotonic() + timeout
    while not (root / "done").exists():
        if (root / "failed").exists():
            raise RuntimeError(f"the tiny pipeline's build ({root}) failed:\n{(root / 'failed').read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the tiny pipeline's build ({root}) did not finish within {timeout:.0f} s")
        time.sleep(1)
    return root / "repo", (root / "uri").read_text()


def private_copy(tiny_build: tuple[Path, str], folder: Path, experiment: str | None) -> TinyRun:
    """A ``clone`` of the built run under ``folder`` (on its own MLflow ``experiment``, created here, if
    one is named), with the environment that reaches the build's server."""
    import mlflow

    built, uri = tiny_build
    repo = clone(built, folder / "repo", experiment)
    if experiment:
        mlflow.MlflowClient(uri).create_experiment(experiment)
    return TinyRun(repo, {**cli_env(), "MLFLOW_TRACKING_URI": uri})


def clone(built: Path, dst: Path, experiment: str | None = None) -> Path:
    """A private copy of the built repo (git history, DVC cache and outputs; not DVC's state and locks in
    .dvc/tmp, which DVC rebuilds). ``experiment`` moves its MLflow records to an experiment of its own:
    a check that kills stages or looks for RUNNING runs then meets no other check's runs."""
    from benchmark.config import update_params

    shutil.copytree(built, dst, symlinks=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder) == built / ".dvc" else [])
    if experiment:
        update_params({"tracking": {"experiment": experiment}}, dst / "params.yaml")
    return dst

