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


@pytest.fixture(scope="session")
def prepared(synth_root, tmp_path_factory) -> Path:
    """The tiny synthetic dataset prepared at 32 px (read-only by convention)."""
    from benchmark.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(tiny_params().data.model_copy(update={"root": str(synth_root), "source": "cholecseg8k"}), out)
    return out


# Modules in order of their cost, longest first (pytest-xdist --dist loadscope: one module to a worker,
# handed out in collection order): the tiny pipeline module, whose tests share one `dvc repro`,
# starts at once on one worker while the other works through the rest. Longest first keeps the two
# workers' finishing times close; the order within a module is kept (test_pipeline's tests build on
# each other in file order).
LONGEST_FIRST = ("test_pipeline.py", "test_multiprocess.py", "test_train.py", "test_study.py",
                 "test_stage_deps.py", "test_new_kind.py", "test_controlnet_sd.py", "test_bench_scripts.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
