"""Adding a model kind is one file in baselines/ plus its params.yaml entry: a kind with a loss name the
suite has never seen trains and samples through `dvc repro`, no other file edited."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import cli_env

KIND = '''"""An L1 denoiser on the SPADE U-Net: a loss name nothing else in the suite knows."""
from benchmark.engine.registry import register
from benchmark.kinds.casdm import SpadeKind


@register("spade-l1")
class SpadeL1Kind(SpadeKind):
    losses = ("l1",)

    def loss(self, model, images, labels, g, accelerator):
        r = self.noisy_batch(model, images, labels, g, accelerator)
        terms = {"l1": (r["out"].float() - r["target"].float()).abs().mean()}
        return terms["l1"], terms
'''


@pytest.mark.slow
def test_a_kind_with_a_new_loss_trains_through_dvc_repro(repo_copy):
    env = cli_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo_copy / 'mlflow.db'}"
    env["PYTHONPATH"] = str(repo_copy)  # the copy's packages, not the installed checkout's
    run = lambda *a: subprocess.run(a, cwd=repo_copy, env=env, capture_output=True, text=True)
    assert run("casdm", "params", "profile", "tiny").returncode == 0
    (repo_copy / "baselines" / "spade_l1.py").write_text(KIND)
    from benchmark.config import update_params

    update_params({"models": {"l1": {"kind": "spade-l1", "role": "baseline", "training": {"loss": "l1", "drop_rate": 0.0},
                                     "sampling": {"scheduler": "ddpm", "num_inference_steps": 2, "guidance_scale": 1.0}}}},
                  repo_copy / "params.yaml")
    out = run("dvc", "repro", "sample@l1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert {"train@l1", "sample@l1"} <= set(l.split("'")[1] for l in out.stdout.splitlines() if "Running stage" in l)
    assert json.loads((repo_copy / "metrics" / "train" / "l1.json").read_text())["steps"] == 4
    assert (repo_copy / "plots" / "train" / "l1.csv").read_text().splitlines()[0].split(",")[:3] == ["step", "l1", "loss"]
    assert json.loads((repo_copy / "metrics" / "sample" / "l1.json").read_text())["test_images"] == 24
    # a loss the kind does not declare is refused before anything trains, naming the key
    update_params({"models": {"l1": {"training": {"loss": "l2"}}}}, repo_copy / "params.yaml")
    bad = run("casdm", "params", "check")
    assert bad.returncode == 1 and "models.l1.training.loss: 'l2' is not a loss of kind 'spade-l1'" in bad.stderr
