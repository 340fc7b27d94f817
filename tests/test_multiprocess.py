"""Multi-process stages: ``train.num_processes`` / ``sample.num_processes`` above 1 run the same dvc.yaml
commands under ``accelerate launch`` (2 processes, gloo on the CPU here), and the results do not depend
on the number of processes."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import cli_env, prepare_tiny, train_here

# fp32 (no autocast): the tolerance below is for reduction order only. Two processes all-reduce the
# gradient as (g_0 + g_1) / 2 instead of summing one batch's mean, and oneDNN picks kernels by batch
# size: differences of ~1e-6 after 4 Adam steps of lr 5e-4 (each step moves a weight by up to ~5e-4).
# A different batch, slice or noise moves weights by ~1e-4 or more: the control run shows it.
TOLERANCE = 1e-5


def _weights(folder):
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_processes_train_and_sample_like_one(repo_copy):
    from benchmark.config import update_params

    env = cli_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo_copy / 'mlflow.db'}"
    # accelerate launch gives each process one thread (OMP_NUM_THREADS=1 unless set); a one-process run on
    # two threads sums convolutions in another order, which can flip a pixel's rounding (it did, once the
    # validation split changed which training maps are drawn). This test is about sharding and seeds, and
    # its image check is exact, so every run here has one thread; thread count's own effect: docs/results.md
    env["OMP_NUM_THREADS"] = "1"

    def run(*args):
        out = subprocess.run(args, cwd=repo_copy, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    def settings(train=None, sample=None, runtime=None):
        update_params({"train": {"mixed_precision": "no", **(train or {})}, "sample": sample or {},
                       "runtime": runtime or {}}, repo_copy / "params.yaml")

    prepare_tiny(repo_copy)

    def train(tag):  # the method itself: CA-MSE + CA-SP (stage 2 from step 2 of 4), the same dvc.yaml command
        run("casdm", "train", "casdm", "--data", "data/prepared", "--checkpoints", f"runs/{tag}", "--out",
            f"models/{tag}", "--metrics", f"metrics/{tag}.json", "--plot", f"plots/{tag}.csv")
        return _weights(repo_copy / "models" / tag), json.loads((repo_copy / "metrics" / f"{tag}.json").read_text())

    def trained_here(tag):  # what that command runs with one process, in this one (tests/conftest.py)
        train_here(repo_copy, "casdm", f"runs/{tag}", f"models/{tag}", f"metrics/{tag}.json", f"plots/{tag}.csv",
                   env["MLFLOW_TRACKING_URI"])
        return _weights(repo_copy / "models" / tag), json.loads((repo_copy / "metrics" / f"{tag}.json").read_text())

    settings(runtime={"num_processes": 1})
    one, m1 = trained_here("one")
    settings(runtime={"num_processes": 2})
    two, m2 = train("two")  # `accelerate launch`, two processes
    settings({"seeds": [1]}, runtime={"num_processes": 1})
    other, _ = trained_here("other")
    assert m1["processes"] == 1 and m2["processes"] == 2
    assert m1["images_seen"] == m2["images_seen"] == 4 * 4  # batch_size is the global batch either way
    assert _max_diff(one, two) < TOLERANCE
    assert _max_diff(one, other) > 10 * TOLERANCE  # the control: the check can fail
    # the logged loss is the global batch's mean, not rank 0's half of it
    assert m2["first_loss"] == pytest.approx(m1["first_loss"], rel=1e-4)

    for n in (1, 2):
        settings({"seeds": [0]}, {"num_processes": n})
        run("casdm", "sample", "casdm", "--data", "data/prepared", "--model", "models/one", "--out", f"samples/{n}",
            "--metrics", f"metrics/sample-{n}.json")
    first, second = (json.loads((repo_copy / "samples" / str(n) / "manifest.json").read_text()) for n in (1, 2))
    assert first == second and len(first["images"]) == 24 + 8
    for r in first["images"]:
        a, b = (np.asarray(Image.open(repo_copy / "samples" / str(n) / r["image"])) for n in (1, 2))
        assert np.array_equal(a, b), r["image"]
    assert json.loads((repo_copy / "metrics" / "sample-2.json").read_text())["processes"] == 2
    assert not list((repo_copy / "samples").glob(".*tmp*")), "a temp folder was left behind"


def test_a_global_batch_that_does_not_divide_is_refused():
    from tests.conftest import tiny_params
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.batch_size 4 is the global batch: it must divide evenly among "
                                          r"runtime.num_processes 3"):
        tiny_params(runtime={"num_processes": 3})


def test_batch_draws_slices_are_the_single_process_draws():
    from casdm.draws import BatchDraws

    full = BatchDraws(7)
    noise, t, u = full.randn((4, 3, 2, 2)), full.randint(1000, (4,)), full.rand((4, 3))
    for rank in (0, 1):
        half = BatchDraws(7, rank, 2)
        s = slice(2 * rank, 2 * rank + 2)
        assert torch.equal(half.randn((2, 3, 2, 2)), noise[s])
        assert torch.equal(half.randint(1000, (2,)), t[s])
        assert torch.equal(half.rand((2, 3)), u[s])
    # and with one process it is the plain generator, number for number
    g = torch.Generator().manual_seed(7)
    assert torch.equal(BatchDraws(7).randn((4, 3, 2, 2)), torch.randn((4, 3, 2, 2), generator=g))
