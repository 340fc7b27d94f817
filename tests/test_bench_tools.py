"""bench tools: the FLOP count a roofline fraction rests on (checked against a hand count), and the verdict-change count of a re-run."""
from __future__ import annotations

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
