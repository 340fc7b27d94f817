"""The shared trainer: exact resume after a kill, NaN guard, MLflow records, the DVC pipeline."""
from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmark.kinds.casdm import CASDMKind
from benchmark.engine.trainer import NonFiniteLoss, RunPaths, train
from tests.conftest import cli_env, tiny_params
from tests.report_checks import check_compare, check_report


def paths(tmp_path, prepared, name="casdm") -> RunPaths:
    return RunPaths(data=prepared, checkpoints=tmp_path / "runs" / name / "checkpoints",
                    model=tmp_path / "models" / name, metrics=tmp_path / "metrics" / f"{name}.json",
                    plot=tmp_path / "plots" / f"{name}.csv")


@pytest.fixture
def mlflow_tmp(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    yield uri
    mlflow.end_run()


def test_train_logs_an_mlflow_run_with_provenance(tmp_path, prepared, mlflow_tmp):
    p = tiny_params(train={"steps": 4, "sample_every": 2, "log_every": 1, "mixed_precision": "bf16"})
    m = train(p, "casdm", paths(tmp_path, prepared))  # bf16 autocast, as params.yaml: the CA-SP stage included
    assert m["steps"] == 4 and m["num_parameters"] > 0 and m["mixed_precision"] == "bf16"
    client = mlflow.MlflowClient(mlflow_tmp)
    run = client.search_runs([client.get_experiment_by_name("casdm-bench").experiment_id])[0]
    tags = run.data.tags
    assert tags["model"] == "casdm" and tags["role"] == "method" and len(tags["dataset_hash"]) == 16
    assert tags["git_commit"] and tags["params_hash"]
    assert run.data.params["training.loss"] == "ca_mse+ca_sp" and run.data.params["train.steps"] == "4"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [h.step for h in history] == [1, 2, 3, 4]
    sp = client.get_metric_history(run.info.run_id, "ca_sp")
    assert [h.step for h in sp] == [3, 4]  # stage 2 starts at sp_start_step (2): logged from step 3
    assert all(h.value > 0 for h in sp)  # and it is on: a bf16 run once logged CA-SP 0.0 at every step
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert len(artifacts) >= 2  # grids at steps 2 and 4
    assert (tmp_path / "models" / "casdm" / "model_index.json").exists()
    assert (tmp_path / "models" / "casdm" / "unet_raw" / "config.json").exists()
    curve = (tmp_path / "plots" / "casdm.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) == 5


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, prepared, mlflow_tmp, monkeypatch):
    real = CASDMKind.loss
    calls = {"n": 0}

    def poisoned(self, *args, **kw):
        loss, terms = real(self, *args, **kw)
        calls["n"] += 1
        return (loss * float("nan"), terms) if calls["n"] == 3 else (loss, terms)

    monkeypatch.setattr(CASDMKind, "loss", poisoned)
    p = tiny_params(train={"steps": 6, "checkpoint_every": 2})
    rp = paths(tmp_path, prepared)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 2 .*step-2"):
        train(p, "casdm", rp)
    assert (rp.checkpoints / "latest").read_text() == "step-2"
    assert not (rp.model / "model_index.json").exists()
    state = json.loads((rp.checkpoints / "step-2" / "state.json").read_text())
    assert state["step"] == 2


def test_changed_params_do_not_resume_from_stale_checkpoints(tmp_path, prepared, mlflow_tmp):
    rp = paths(tmp_path, prepared)
    train(tiny_params(train={"steps": 2}), "casdm", rp)
    assert (rp.checkpoints / "step-2").exists()
    train(tiny_params(train={"steps": 2, "lr": 1e-3}), "casdm", rp)  # must train afresh, not "resume" at 2
    client = mlflow.MlflowClient(mlflow_tmp)
    runs = client.search_runs([client.get_experiment_by_name("casdm-bench").experiment_id])
    assert len(runs) == 2


def test_unknown_boost_class_is_named_before_anything_starts(tmp_path, prepared, mlflow_tmp):
    p = tiny_params(models={"casdm": {"training": {"ca_boost": {"Cystic Dcut": 1.5}}}})
    rp = paths(tmp_path, prepared)
    with pytest.raises(ValueError, match=r"models\.casdm\.training\.ca_boost: unknown class 'Cystic Dcut'"):
        train(p, "casdm", rp)
    assert not rp.checkpoints.exists()


def _weights(root):
    return {k: load_file(root / sub / "diffusion_pytorch_model.safetensors")
            for k, sub in (("ema", "unet"), ("raw", "unet_raw"))}


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(repo_copy):
    env = cli_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo_copy / 'mlflow.db'}"
    run = lambda *a: subprocess.run(a, cwd=repo_copy, env=env, check=True, capture_output=True, text=True)
    run("casdm", "params", "profile", "tiny")
    from benchmark.config import update_params

    update_params({"train": {"steps": 30, "checkpoint_every": 5, "sample_every": 1000, "log_every": 5},
                   "models": {"casdm": {"training": {"sp_start_step": 8}}}}, repo_copy / "params.yaml")
    run("dvc", "repro", "prepare")
    train_cmd = ["casdm", "train", "casdm", "--data", "data/prepared", "--checkpoints", "runs/casdm/checkpoints",
                 "--out", "models/casdm", "--metrics", "metrics/train/casdm.json", "--plot", "plots/train/casdm.csv"]
    run(*train_cmd)
    reference = _weights(repo_copy / "models" / "casdm")
    for d in ("runs", "models"):
        subprocess.run(["rm", "-rf", str(repo_copy / d)], check=True)

    proc = subprocess.Popen(train_cmd, cwd=repo_copy, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = repo_copy / "runs" / "casdm" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and latest.read_text() in ("step-10", "step-15")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(latest.read_text().split("-")[1])
    assert 10 <= killed_at < 30, "the run must have been killed part-way"
    assert not (repo_copy / "models" / "casdm").exists()

    out = run(*train_cmd)
    assert f"resuming from step-{killed_at} (step {killed_at}/30)" in out.stderr
    resumed = _weights(repo_copy / "models" / "casdm")
    for kind in ("raw", "ema"):
        assert reference[kind].keys() == resumed[kind].keys()
        for k in reference[kind]:
            assert torch.equal(reference[kind][k], resumed[kind][k]), (kind, k)


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_benchmark_end_to_end(repo_copy, monkeypatch):
    env = cli_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo_copy / 'mlflow.db'}"
    dvc = lambda *a: subprocess.run(["dvc", *a], cwd=repo_copy, env=env, capture_output=True, text=True)
    subprocess.run(["casdm", "params", "profile", "tiny"], cwd=repo_copy, env=env, check=True)
    first = dvc("repro")
    assert first.returncode == 0, first.stdout + first.stderr
    from benchmark.config import load_params

    models = list(load_params(repo_copy / "params.yaml").models)
    assert {"casdm", "casdm-mse", "casdm-camse", "sdm", "controlnet"} <= set(models)
    for name in models:
        manifest = json.loads((repo_copy / "samples" / name / "manifest.json").read_text())
        splits = [r["split"] for r in manifest["images"]]
        assert splits.count("test") == 24 and splits.count("train") == 8 and manifest["model"] == name
        for r in manifest["images"]:
            assert (repo_copy / "samples" / name / r["image"]).exists() and (repo_copy / r["map"]).exists()
        assert json.loads((repo_copy / "metrics" / "train" / f"{name}.json").read_text())["steps"] == 4
    # the map generator's chain: prompts of training maps -> maps -> casdm images -> a downstream row
    generated = json.loads((repo_copy / "samples" / "maps" / "manifest.json").read_text())["images"]
    assert len(generated) == 8 and all(r["prompt"] for r in generated)
    from PIL import Image

    for r in generated:
        ids = np.unique(np.asarray(Image.open(repo_copy / "samples" / "maps" / r["map"])))
        assert ids.max() < 13 and (repo_copy / "samples" / "maps" / r["image"]).exists()
    board = json.loads((repo_copy / "metrics" / "leaderboard.json").read_text())
    assert set(board) == {"real", "real+control", *models, "casdm+maps"}
    ex = "efficientnet_lite0:blocks.0"
    maps_cols = {f"maps_{b}{k}" for b in ("", "baseline_") for k in ("adherence", "rare_presence", "cooccurrence_l1",
                                                                     "area_w1", "diversity")}
    columns = {"role", f"fid:{ex}", f"kid:{ex}_low", f"precision:{ex}", f"coverage:{ex}", "semantic_miou_high",
               "delta_miou_verdict", "vs_control_rare_miou_low", "map_conditioned_steps", "images_seen",
               "downstream_segmenter"} | {f"downstream_{k}{s}" for s in ("", "_std")
                                          for k in ("miou", "mdice", "rare_miou", "rare_mdice")} | maps_cols
    for name, row in board.items():
        assert columns <= set(row), (name, columns - set(row))
        assert "EfficientNet-Lite0 encoder" in row["downstream_segmenter"]  # the segmenter is named as it is
        numbers = [row["downstream_miou"], row["downstream_miou_std"]]
        if name not in ("real", "real+control"):
            numbers += [row["delta_miou"], row["delta_miou_low"], row["vs_control_miou"]]
            assert row["delta_miou_verdict"] in ("better", "worse", "indistinguishable")
        if name == "casdm+maps":
            numbers += [row["maps_adherence"], row["maps_baseline_adherence"], row["maps_area_w1"],
                        row["semantic_miou"]]
        else:
            assert row["maps_adherence"] is None, name
        if name not in ("real+control", "casdm+maps"):  # the real row has the reference FID (the floor)
            numbers += [row[f"fid:{ex}"], row[f"fid:{ex}_low"], row[f"kid:{ex}"], row[f"precision:{ex}"],
                        row["semantic_miou"], row["semantic_miou_low"]]
        if name in models:
            assert row["images_seen"] == 4 * 4 and row["map_conditioned_steps"] == (2 if name == "controlnet" else 4)
        assert all(isinstance(v, float) and math.isfinite(v) for v in numbers), (name, row)
    assert board["real"]["delta_miou"] is None and board["real+control"][f"fid:{ex}"] is None
    found = json.loads((repo_copy / "metrics" / "comparisons.json").read_text())
    kinds = {c["kind"] for c in found}
    assert {"vs real", "vs real+control", "method vs ablation", "method vs baseline", "ladder step"} <= kinds
    ladder = {(c["a"], c["b"]) for c in found if c["kind"] == "ladder step"}
    assert ladder == {("casdm-camse", "casdm-mse"), ("casdm", "casdm-camse")}
    assert {c["metric"] for c in found if c["kind"] == "ladder step"} >= {"downstream_miou", "fid", "semantic_miou"}
    assert "## Comparisons" in (repo_copy / "reports" / "leaderboard.md").read_text()
    made = subprocess.run(["casdm", "maps", "generate", "--prompt", "Liver, large, upper left; Grasper, small",
                           "--num", "2", "--out", "gen"], cwd=repo_copy, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (repo_copy / "gen").glob("*.png")) == [
        "image-000.png", "image-001.png", "map-000-colour.png", "map-000.png", "map-001-colour.png", "map-001.png"]
    bad = subprocess.run(["casdm", "maps", "generate", "--prompt", "Liver, hughe"], cwd=repo_copy, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown word 'hughe'" in bad.stderr and "did you mean" in bad.stderr
    shown = subprocess.run(["casdm", "leaderboard"], cwd=repo_copy, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert all(name in shown.stdout for name in board) and "efficientnet_lite0:blocks.0" in shown.stdout
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("casdm-bench").experiment_id])
    trained = [r for r in runs if r.data.tags.get("kind") not in ("leaderboard", "maps")]
    roles = {r.data.tags["model"]: r.data.tags["role"] for r in trained}
    assert roles == {"casdm": "method", "casdm-mse": "ablation", "casdm-camse": "ablation", "sdm": "baseline",
                     "controlnet": "baseline", "mapgen": "generator"}
    assert all(r.info.status == "FINISHED" for r in runs)
    (maps_run,) = [r for r in runs if r.data.tags.get("kind") == "maps"]
    assert maps_run.data.metrics["generator/adherence"] == board["casdm+maps"]["maps_adherence"]
    # each model's training run carries its leaderboard numbers; one leaderboard run holds the table
    assert all(r.data.metrics["eval/downstream_miou"] == board[r.data.tags["model"]]["downstream_miou"]
               for r in trained if r.data.tags["model"] in models)
    (leader,) = [r for r in runs if r.data.tags.get("kind") == "leaderboard"]
    monkeypatch.chdir(repo_copy)  # the default artifact root (./mlruns) is relative to the project
    table = json.loads(Path(client.download_artifacts(leader.info.run_id, "leaderboard.json")).read_text())
    assert sorted(table["data"][i][table["columns"].index("model")] for i in range(len(table["data"]))) == sorted(board)
    check_report(repo_copy, board, models, client, leader.info.run_id)

    second = dvc("repro")
    assert second.returncode == 0 and "Running stage" not in second.stdout, second.stdout

    # a sampler change re-samples that model only; a training knob of sdm re-runs only sdm's stages
    _git(repo_copy, "add", "-A")
    _git(repo_copy, "commit", "-qm", "tiny run")
    from benchmark.config import update_params

    update_params({"models": {"casdm": {"sampling": {"scheduler": "dpmsolver++"}}}}, repo_copy / "params.yaml")
    third = dvc("repro")
    assert third.returncode == 0, third.stderr
    ran = set(re.findall(r"Running stage '([^']+)'", third.stdout))
    assert ran == {"sample@casdm", "evaluate@casdm", "maps", "evaluate-maps", "leaderboard", "report"}  # maps: casdm draws them
    _git(repo_copy, "add", "-A")
    _git(repo_copy, "commit", "-qm", "dpm sampler")
    exp = dvc("exp", "run", "-n", "no-maps", "-S", "models.sdm.training.drop_rate=1.0")  # every map dropped: new weights
    assert exp.returncode == 0, exp.stdout + exp.stderr
    ran = set(re.findall(r"Running stage '([^']+)'", exp.stdout))
    assert ran == {"train@sdm", "sample@sdm", "evaluate@sdm", "leaderboard", "report"}, exp.stdout
    check_compare(repo_copy, env, leader.info.run_id)


def test_cli_unknown_model_is_named():
    from typer.testing import CliRunner

    from benchmark.cli import app

    paths = {"train": ["--data", "d", "--checkpoints", "c", "--out", "o", "--metrics", "m.json", "--plot", "p.csv"],
             "sample": ["--data", "d", "--model", "m", "--out", "o", "--metrics", "m.json"]}
    for cmd in ("train", "sample"):
        res = CliRunner().invoke(app, [cmd, "nope", *paths[cmd]])
        assert res.exit_code == 1 and "unknown model 'nope'" in res.output and "casdm-mse" in res.output
