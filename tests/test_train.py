"""The shared trainer: exact resume after a kill, a corrupt checkpoint skipped, NaN guard, MLflow records."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from benchmark.kinds.casdm import CASDMKind
from benchmark.engine.trainer import NonFiniteLoss, RunPaths, train
from tests.conftest import cli_env, tiny_params, train_here


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
    p = tiny_params(train={"steps": 4, "mixed_precision": "bf16"}, runtime={"sample_every": 2, "log_every": 1})
    m = train(p, "casdm", paths(tmp_path, prepared))  # bf16 autocast, as params.yaml: the CA-SP stage included
    assert m["steps"] == 4 and m["num_parameters"] > 0 and m["mixed_precision"] == "bf16"
    client = mlflow.MlflowClient(mlflow_tmp)
    run = client.search_runs([client.get_experiment_by_name("casdm-bench").experiment_id])[0]
    tags = run.data.tags
    assert tags["model"] == "casdm" and tags["role"] == "method" and len(tags["dataset_hash"]) == 16
    assert tags["git_commit"] and tags["params_hash"] and tags["seed"] == "0"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"].removesuffix("-dirty")  # the UI's source version
    assert "dvc_exp" not in tags  # only under `dvc exp run`
    assert set(run.data.metrics) >= {"final_loss", "s_per_step"} and not any(k.startswith("final_final") for k in run.data.metrics)
    assert "num_parameters" not in run.data.metrics and run.data.params["num_parameters"].isdigit()  # a count, not a score
    assert run.data.params["training.loss"] == "ca_mse+ca_sp" and run.data.params["train.steps"] == "4"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [h.step for h in history] == [1, 2, 3, 4]
    sp = client.get_metric_history(run.info.run_id, "ca_sp")
    assert [h.step for h in sp] == [3, 4]  # stage 2 starts at sp_start_step (2): logged from step 3
    assert all(h.value > 0 for h in sp)  # and it is on: a bf16 run once logged CA-SP 0.0 at every step
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert len(artifacts) >= 2  # grids at steps 2 and 4
    # fixed paths for the compare views: the grid, and the grid as a table (MLflow's artifact view compares tables)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/last_grid.json",
                                                                                   "samples/last_grid.png"]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "samples/last_grid.json")).read_text())
    assert table["columns"] == ["maps", "grid"] and table["data"][0][0] == "the training grid's maps"
    assert table["data"][0][1]["type"] == "image"  # MLflow renders the cell as the image
    assert (tmp_path / "models" / "casdm" / "model_index.json").exists()
    assert (tmp_path / "models" / "casdm" / "unet_raw" / "config.json").exists()
    # the prepared data as the run's dataset input, the pipeline as a model in the Models tab linked to the run
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.digest == tags["dataset_hash"] and used.dataset.name.endswith(f"-{p.data.resolution}px")
    assert [t.value for t in used.tags if t.key == "mlflow.data.context"] == ["training"]
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and model.name == "casdm-seed0"
    assert model.tags["path"] == str(tmp_path / "models" / "casdm") and model.tags["role"] == "method"
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
    p = tiny_params(train={"steps": 6}, runtime={"checkpoint_every": 2})
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
def test_killed_run_resumes_to_identical_weights(repo_copy, prepared):
    """The dvc.yaml training command killed with SIGKILL after CA-SP has started (step 4 of 12), then run again:
    it resumes from the last checkpoint (the frozen copy, EMA, optimizer and data order restored) to the
    weights of a run never killed, bit for bit. The profile is applied and the prepared set copied in, in
    this process (the CLI and `dvc repro prepare` have checks of their own)."""
    env = cli_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo_copy / 'mlflow.db'}"
    env["OMP_NUM_THREADS"] = "1"  # as the reference below: one thread, one reduction order
    run = lambda *a: subprocess.run(a, cwd=repo_copy, env=env, check=True, capture_output=True, text=True)
    from benchmark.config import apply_profile, update_params

    apply_profile("tiny", repo_copy / "params.yaml")
    update_params({"train": {"steps": 12}, "runtime": {"checkpoint_every": 3, "sample_every": 1000, "log_every": 3},
                   "models": {"casdm": {"training": {"sp_start_step": 4}}}}, repo_copy / "params.yaml")
    shutil.copytree(prepared, repo_copy / "data" / "prepared")
    train_cmd = ["casdm", "train", "casdm", "--data", "data/prepared", "--checkpoints", "runs/casdm/checkpoints",
                 "--out", "models/casdm", "--metrics", "metrics/train/casdm.json", "--plot", "plots/train/casdm.csv"]
    # the run never killed: the same command's trainer, in this process on one thread (tests/conftest.py)
    train_here(repo_copy, "casdm", "runs/casdm/checkpoints", "models/casdm", "metrics/train/casdm.json",
               "plots/train/casdm.csv", env["MLFLOW_TRACKING_URI"])
    reference = _weights(repo_copy / "models" / "casdm")
    for d in ("runs", "models"):
        subprocess.run(["rm", "-rf", str(repo_copy / d)], check=True)

    proc = subprocess.Popen(train_cmd, cwd=repo_copy, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = repo_copy / "runs" / "casdm" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and latest.read_text() in ("step-6", "step-9")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(latest.read_text().split("-")[1])
    assert 6 <= killed_at < 12, "the run must have been killed part-way, after CA-SP started"
    assert not (repo_copy / "models" / "casdm").exists()

    out = run(*train_cmd)
    assert f"resuming from step-{killed_at} (step {killed_at}/12)" in out.stderr
    resumed = _weights(repo_copy / "models" / "casdm")
    for kind in ("raw", "ema"):
        assert reference[kind].keys() == resumed[kind].keys()
        for k in reference[kind]:
            assert torch.equal(reference[kind][k], resumed[kind][k]), (kind, k)


def test_cli_unknown_model_is_named():
    from typer.testing import CliRunner

    from benchmark.cli import app

    paths = {"train": ["--data", "d", "--checkpoints", "c", "--out", "o", "--metrics", "m.json", "--plot", "p.csv"],
             "sample": ["--data", "d", "--model", "m", "--out", "o", "--metrics", "m.json"]}
    for cmd in ("train", "sample"):
        res = CliRunner().invoke(app, [cmd, "nope", *paths[cmd]])
        assert res.exit_code == 1 and "unknown model 'nope'" in res.output and "casdm-mse" in res.output


def test_a_truncated_latest_checkpoint_is_skipped_for_the_one_before(tmp_path, prepared, mlflow_tmp):
    import io

    from accelerate.state import AcceleratorState
    from rich.console import Console

    p = tiny_params(train={"mixed_precision": "no"})  # 4 steps, a checkpoint every 2
    where = paths(tmp_path, prepared, "casdm-mse")
    train(p, "casdm-mse", where)
    reference = load_file(where.model / "unet" / "diffusion_pytorch_model.safetensors")
    victim = where.checkpoints / "step-4" / "model.safetensors"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a copy cut short by a full disk
    shutil.rmtree(where.model)
    AcceleratorState._reset_state(reset_partial_state=True)
    log = io.StringIO()
    train(p, "casdm-mse", where, console=Console(file=log, width=400))
    text = log.getvalue()
    assert f"skipping checkpoint {victim.parent}" in text and f"{victim}:" in text and "truncated" in text, text
    assert "resuming from step-2 (step 2/4)" in text, text
    resumed = load_file(where.model / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)  # steps 3-4 trained again, alike
    assert (where.checkpoints / "latest").read_text() == "step-4"  # and the bad checkpoint was replaced


def test_a_model_trains_at_its_own_lr_where_its_training_block_sets_one(tmp_path, prepared, mlflow_tmp):
    """models.<name>.training.lr (a learning rate screened for that model) replaces train.lr for it alone:
    in its optimiser, its resume hash and its MLflow params; the other models keep train.lr."""
    from benchmark.kinds.registry import model_options, train_config, training_config

    p = tiny_params(train={"steps": 2, "warmup_steps": 0}, models={"sdm": {"training": {"lr": 0.0123}}})
    assert train_config(p, "sdm").lr == 0.0123 and train_config(p, "casdm").lr == p.train.lr != 0.0123
    assert training_config(p, "sdm")["train"]["lr"] == 0.0123
    assert training_config(p, "sdm") != training_config(tiny_params(train={"steps": 2, "warmup_steps": 0}), "sdm")
    with pytest.raises(ValueError, match=r"models\.sdm\.training\.lr: Input should be greater than 0"):
        model_options(tiny_params(models={"sdm": {"training": {"lr": -1.0}}}), "sdm")
    rp = paths(tmp_path, prepared, "sdm")
    train(p, "sdm", rp)
    client = mlflow.MlflowClient(mlflow_tmp)
    run = client.search_runs([client.get_experiment_by_name("casdm-bench").experiment_id])[0]
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
    assert lrs and max(lrs) == pytest.approx(0.0123 * 0.5)  # logged after step 1 of a 2-step cosine: half the peak
    assert run.data.params["train.lr"] == "0.0123"
