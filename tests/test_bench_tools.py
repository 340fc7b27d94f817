"""bench tools: the FLOP count a roofline fraction rests on (checked against a hand count), and the verdict-change count of a re-run."""
from __future__ import annotations

import json

import torch

from bench.roofline import count_flops, peak_flops, roofline


def test_a_linear_layers_forward_and_backward_count_six_flops_per_weight_and_row():
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(64, 32, bias=False), torch.randn(16, 64, requires_grad=True)
    # forward 2*16*64*32; backward: grad wrt input and grad wrt weight, each as large again
    assert count_flops(lambda: layer(x).sum().backward()) == 6 * 16 * 64 * 32
    assert count_flops(lambda: layer(x)) == 2 * 16 * 64 * 32


def test_the_fraction_is_achieved_over_the_better_peak():
    peak = peak_flops("cpu", torch.float32, repeats=1)
    assert set(peak) == {"gemm_flops_per_s", "conv3x3_flops_per_s"} and min(peak.values()) > 1e8
    r = roofline(10**9, 0.5, {"gemm_flops_per_s": 4e9, "conv3x3_flops_per_s": 8e9})
    assert r["achieved_flops_per_s"] == 2e9 and r["fraction_of_peak"] == 0.25


def test_verdict_changes_are_counted_on_matched_comparisons_only():
    from bench.verdicts import changes

    row = {"a": "casdm", "b": "real", "metric": "fid", "delta": -1.0, "p_adjusted": 0.01, "verdict": "better"}
    old = [row, {**row, "metric": "kid"}, {**row, "b": "sdm"}]
    new = [{**row, "verdict": "indistinguishable", "delta": -0.2}, {**row, "metric": "kid"}, {**row, "b": "control"}]
    r = changes(old, new)
    assert (r["matched"], r["changed"]) == (2, 1)
    assert r["rows"][0]["old"]["verdict"] == "better" and r["rows"][0]["new"]["verdict"] == "indistinguishable"
    assert r["only_old"] == [["casdm", "sdm", "fid"]] and r["only_new"] == [["casdm", "control", "fid"]]


def test_the_gpu_check_writes_the_paper_profile_cut_and_refuses_without_cuda(tmp_path):
    """bench.gpu_check --dry-run: the scratch project is the paper profile (its preset, optimiser and
    sampler) with only the cut's keys changed, it validates, and the working tree is left alone; on a
    machine without CUDA, --device cuda stops at once saying so."""
    import subprocess
    import sys

    import yaml

    from benchmark.config import load_params
    from tests.conftest import REPO, cli_env

    before = (REPO / "params.yaml").read_bytes()
    out = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--dry-run", "--keep",
                          str(tmp_path / "p"), "--out", str(tmp_path / "gc.json")], cwd=REPO, env=cli_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (REPO / "params.yaml").read_bytes() == before
    p = load_params(tmp_path / "p" / "params.yaml")
    paper = yaml.safe_load((REPO / "benchmark" / "config" / "profiles" / "paper.yaml").read_text())
    assert (p.train.preset, p.train.batch_size, p.train.lr, p.train.ema_decay) == (
        "paper", paper["train"]["batch_size"], paper["train"]["lr"], paper["train"]["ema_decay"])
    assert (p.data.source, p.data.resolution, p.train.steps) == ("cholecseg8k", 256, 4)
    assert p.models["casdm"].sampling.num_inference_steps == 50 and p.models["casdm"].training["sp_start_step"] == 2
    assert json.loads((tmp_path / "gc.json").read_text())["cut"]["train"]["steps"] == 4
    if not torch.cuda.is_available():  # on a CUDA machine the same command would run the check itself
        refused = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(tmp_path / "x")],
                                 cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "no CUDA device" in refused.stderr and not (tmp_path / "x").exists()
