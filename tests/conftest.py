"""Shared fixtures: small datasets the tests write themselves (nothing is downloaded)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "tests/test_pipeline.py"  # its checks read the tiny run that tests/tiny_run.py builds once


def _threads(workers: int) -> str | None:
    """OMP_NUM_THREADS for a run of ``workers`` test processes: the cores shared out (two workers on two
    cores, each running two OpenMP threads, mostly wait on each other); unset for one process."""
    return str(max(1, (os.cpu_count() or 1) // workers)) if workers > 1 else None


# Each pytest-xdist worker (and every process it starts) gets its share of the cores before torch is
# imported; the tiny run built beside them gets the same count, so a check that redraws one of its
# images in another process meets the same reduction order.
if (_t := _threads(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))) is not None:
    os.environ.setdefault("OMP_NUM_THREADS", _t)
# The tiny run's build (25 stage processes one after another, started by the controller) is the longest
# chain of the session: the workers, whose modules can wait, yield the cores to it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.nice(5)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every test starts with accelerate's process-wide state cleared. accelerate keeps the first
    ``Accelerator``'s mixed precision for the whole process and silently hands it to every later one,
    so a bf16 training run in one test turned another test's ``Accelerator(cpu=True)`` into bf16
    autocast (and its exact-value checks failed). Stages run one process each and never meet this."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A tiny synthetic CholecSeg8K-layout dataset (17 videos x 1 clip x 2 frames), read-only by convention."""
    from benchmark.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "cholec"
    spec = tiny_params().data.synthetic.model_copy(update=dict(clips_per_video=1, frames_per_clip=2, width=64,
                                                                height=48, seed=3))
    generate(spec, root)
    return root


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic dataset for tests that damage it."""
    dst = tmp_path / "cholec"
    shutil.copytree(synth_root, dst)
    return dst


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The project's files (as a fresh clone would have them) copied into a scratch git repo."""
    from benchmark.provenance import copy_project

    return copy_project(REPO, tmp_path / "repo")


def cli_env() -> dict:
    """Environment for subprocesses: the venv's scripts (casdm, dvc) first on PATH, offline."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    return env


def tiny_params(**overrides):
    """params.yaml merged with the tiny profile, then ``overrides`` (nested dicts)."""
    import yaml

    from benchmark.config import PROFILES_DIR, deep_merge, parse_params

    data = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                      yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text()))
    return parse_params(deep_merge(data, overrides), "tiny params")


def prepare_tiny(repo: Path) -> None:
    """What `casdm params profile tiny` and `dvc repro prepare` leave in a project copy (params.yaml, the
    synthetic set, data/prepared), done in this process for checks about later stages: the CLI and the
    data stages under DVC have checks of their own, and each process started costs seconds of imports."""
    from benchmark.config import apply_profile
    from benchmark.data.prepare import prepare
    from benchmark.data.synthetic import generate

    data = apply_profile("tiny", repo / "params.yaml").data
    generate(data.synthetic, repo / data.root)
    prepare(data.model_copy(update={"root": str(repo / data.root)}), repo / "data" / "prepared")


def train_here(repo: Path, model: str, checkpoints: str, out: str, metrics: str, plot: str, tracking_uri: str) -> None:
    """`casdm train MODEL --data data/prepared --checkpoints ... --out ... --metrics ... --plot ...` in ``repo``
    as the command runs it with one process, but in this process on one thread: bit-equal to the command
    under OMP_NUM_THREADS=1, without a second import of torch and diffusers (seconds a process)."""
    import torch

    from benchmark.config import load_params
    from benchmark.engine.trainer import RunPaths, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
            mp.chdir(repo)
            train(load_params(repo / "params.yaml"), model,
                  RunPaths(data=repo / "data" / "prepared", checkpoints=repo / checkpoints, model=repo / out,
                           metrics=repo / metrics, plot=repo / plot))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prepared(synth_root, tmp_path_factory) -> Path:
    """The tiny synthetic dataset prepared at 32 px (read-only by convention)."""
    from benchmark.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(tiny_params().data.model_copy(update={"root": str(synth_root), "source": "cholecseg8k"}), out)
    return out


_TINY: dict = {}  # the build this process started, if any


def _tiny_root(base: Path) -> Path:
    return base / "tiny-run"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """On the xdist controller: start the tiny run's build as soon as a worker has collected a check that
    reads it, before any test is handed out, so it runs beside the other modules instead of first."""
    if "build" in _TINY or not any(i.startswith(PIPELINE) for i in ids):
        return
    from tests.tiny_run import TinyBuild

    config = node.config
    threads = _threads(int(config.option.numprocesses or 1))
    _TINY["build"] = TinyBuild(_tiny_root(config._tmp_path_factory.getbasetemp()),
                               {"OMP_NUM_THREADS": threads} if threads else {}).start()


def pytest_sessionfinish(session) -> None:
    if "build" in _TINY:
        _TINY.pop("build").stop()  # its MLflow server and PostgreSQL go with it


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> tuple[Path, str]:
    """The tiny run (read-only: checks work on ``tests.tiny_run.clone``s) and its MLflow server's URI. An
    xdist worker waits for the controller's build; a single process builds it here."""
    from tests.tiny_run import TinyBuild, wait_for

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return wait_for(_tiny_root(base.parent))  # xdist gives each worker base/popen-gwN
    if "build" not in _TINY:
        _TINY["build"] = TinyBuild(_tiny_root(base)).start()
    return wait_for(_tiny_root(base))


# Modules in order of their cost, longest first (pytest-xdist --dist loadscope: one module, or one class,
# to a worker, handed out in this order), then the tiny run's checks last, in two classes of about equal
# length: by the time the workers reach them the controller's build (started with the session) is done or
# nearly so, and each worker takes one. (Not more, smaller classes: a worker asks for more work while it
# still holds two tests, so one worker took four one-test classes while the other ran one.) The order within
# a module or class is kept.
LONGEST_FIRST = ("test_multiprocess.py", "test_train.py", "test_study.py", "test_stage_deps.py",
                 "test_controlnet_sd.py", "test_bench_scripts.py")
TINY_LAST = ("TestTheTinyRun", "TestChangesToTheTinyRun")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    last = {name: len(rank) + 1 + i for i, name in enumerate(TINY_LAST)}

    def key(item) -> int:
        unit = item.cls.__name__ if item.path.name == Path(PIPELINE).name and item.cls else item.path.name
        return last.get(unit, rank.get(item.path.name, len(rank)))

    items.sort(key=key)  # stable: the rest keep their order
