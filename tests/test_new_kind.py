"""Adding a model kind from outside the project is one module plus an entry point (group
``casdm_bench.kinds``) and its params.yaml entry: a kind with a loss name the suite has never seen
trains and samples through `dvc repro`, no file of the project edited."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_env

KIND = '''"""An L1 denoiser on the SPADE U-Net: a loss name nothing else in the suite knows."""
from benchmark.kinds.spade import SpadeKind


class SpadeL1Kind(SpadeKind):
    losses = ("l1",)

    def loss(self, model, images, labels, g, accelerator):
        r = self.forward(model, images, labels, g, accelerator)
        terms = {"l1": (r.out.float() - r.noised.target.float()).abs().mean()}
        return terms["l1"], terms
'''


def declare_kind(root: Path, name: str, module: str, cls: str, source: str) -> None:
    """``module`` written under ``root`` with an installed distribution's metadata declaring it."""
    (root / f"{module}.py").write_text(source)
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[casdm_bench.kinds]\n{name} = {module}:{cls}\n")


@pytest.mark.slow
def test_a_kind_with_a_new_loss_trains_through_dvc_repro(repo_copy):
    env = cli_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo_copy / 'mlflow.db'}"
    env["PYTHONPATH"] = str(repo_copy)  # the copy's packages, not the installed checkout's
    run = lambda *a: subprocess.run(a, cwd=repo_copy, env=env, capture_output=True, text=True)
    assert run("casdm", "params", "profile", "tiny").returncode == 0
    declare_kind(repo_copy, "spade-l1", "spade_l1", "SpadeL1Kind", KIND)
    from benchmark.config import update_params

    update_params({"models": {"l1": {"kind": "spade-l1", "role": "baseline", "training": {"loss": "l1", "drop_rate": 0.0},
                                     "sampling": {"scheduler": "ddpm", "num_inference_steps": 2, "guidance_scale": 1.0}}}},
                  repo_copy / "params.yaml")
    out = run("dvc", "repro", "sample@l1-0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert {"train@l1-0", "sample@l1-0"} <= set(l.split("'")[1] for l in out.stdout.splitlines() if "Running stage" in l)
    assert json.loads((repo_copy / "metrics" / "train" / "l1" / "seed0.json").read_text())["steps"] == 4
    assert (repo_copy / "plots" / "train" / "l1" / "seed0.csv").read_text().splitlines()[0].split(",")[:3] == ["step", "l1", "loss"]
    assert json.loads((repo_copy / "metrics" / "sample" / "l1" / "seed0.json").read_text())["test_images"] == 24
    # a loss the kind does not declare is refused before anything trains, naming the key
    update_params({"models": {"l1": {"training": {"loss": "l2"}}}}, repo_copy / "params.yaml")
    bad = run("casdm", "params", "check")
    assert bad.returncode == 1 and "models.l1.training.loss: 'l2' is not a loss of kind 'spade-l1'" in bad.stderr
