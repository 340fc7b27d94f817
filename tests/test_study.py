"""Optuna studies: a tiny study nests its trials under one MLflow parent; a failing trial is FAIL and
the next one runs; a killed study resumes with its completed trials intact; --write-params changes
only the tuned keys; the study section is validated."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import mlflow
import optuna
import pytest
import yaml

from benchmark.config import ConfigError
from tests.conftest import REPO, cli_env, tiny_params


def study_params(**study):
    """The tiny profile's study on the fixture's validation video; the objective is semantic_miou (a
    rare_semantic_miou study on maps without a rare class is refused up front, as tested below)."""
    return tiny_params(study={"objectives": ["semantic_miou"], **study})


@pytest.fixture
def study_dir(tmp_path, prepared, monkeypatch):
    """A working folder with the prepared data, a trained judge and its own MLflow store."""
    from benchmark.stages.evaluate import train_judge

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train_judge(tiny_params(), prepared, tmp_path / "judge", log=lambda *a: None)
    return tmp_path


def runs_of(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("casdm-bench")
    return client.search_runs([exp.experiment_id])


def test_tiny_study_nests_trial_runs_under_one_parent(study_dir, prepared):
    from benchmark.study.run import run_study

    params = study_params()
    parent_state = []  # the parent run's status each time a trial reports: RUNNING while trials run

    def log(msg, *a):
        if str(msg).startswith("trial "):
            client = mlflow.MlflowClient()
            (run,) = [r for r in runs_of(study_dir) if r.data.tags.get("kind") == "study"]
            parent_state.append(client.get_run(run.info.run_id).info.status)

    study = run_study(params, prepared, study_dir / "judge", log=log)
    assert parent_state == ["RUNNING", "RUNNING"]
    states = [t.state for t in study.trials]
    assert len(states) == 2 and all(s == optuna.trial.TrialState.COMPLETE for s in states)
    assert all(0 <= t.value <= 1 for t in study.trials)
    first = study.trials[0]  # trial 0 is the configured (paper) weights, the yardstick for tuning
    training = params.models["casdm"].training
    assert first.user_attrs["baseline"] == "params.yaml" and first.params["lambda_sp"] == training["lambda_sp"]
    assert first.params["ca_boost"] == 1.5 and first.params["ca_variant"] == training["ca_variant"]
    runs = runs_of(study_dir)
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    for r in trials:  # params, objective, state and where the trial's files are
        t = study.trials[int(r.data.tags["trial"])]
        assert r.data.metrics["semantic_miou"] == pytest.approx(t.value)
        assert r.data.params["lambda_sp"] == str(t.params["lambda_sp"]) and r.data.tags["state"] == "COMPLETE"
        assert os.path.isdir(r.data.tags["artifacts"])
        # 4 steps, a report every 2: step 2 reports only if CA-SP (searched) runs by then; step 4 is final
        reported = round(t.params["sp_start_fraction"] * 4) < 2
        assert ("intermediate_semantic_miou" in r.data.metrics) == reported
    assert (study_dir / "studies/casdm-loss-weights/plots/history_semantic_miou.png").exists()
    artifacts = mlflow.MlflowClient().list_artifacts(parent.info.run_id, "plots")
    assert "plots/history_semantic_miou.png" in [a.path for a in artifacts]
    assert parent.info.status == "FINISHED"
    for r in trials:  # the trial's run: its commit, loss curve and sample grid, as a training run has
        assert len(r.data.tags["mlflow.source.git.commit"]) >= 7
        history = mlflow.MlflowClient().get_metric_history(r.info.run_id, "loss")
        assert len(history) >= 2 and sorted(m.step for m in history)[-1] == 4
        assert "samples/last_grid.png" in [a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "samples")]
    from benchmark.study.store import trial_bootstrap

    for t in study.trials:
        # user attributes: short values (an interval, not 200 resamples) that holds the objective
        assert all(not isinstance(v, list) or len(v) <= 2 for v in t.user_attrs.values())
        low, high = t.user_attrs["semantic_miou_interval"]
        assert low <= t.value <= high
        # the trial's files are Optuna artifacts (optuna-dashboard --artifact-dir shows them)
        names = sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(t, storage=study._storage))
        assert names == ["bootstrap.json", "last_grid.png", "loss.csv", "train.json"]
        # every trial keeps its objective on the same bootstrap resamples: the report pairs best with trial 0
        assert len(trial_bootstrap(t, params.study.name)["semantic_miou"]) == params.evaluate.bootstrap.resamples
    from types import SimpleNamespace

    from benchmark.report.sections import study as study_section

    assets = {}
    shown = study_section(SimpleNamespace(params=params, paths=SimpleNamespace(studies=study_dir / "studies")), assets)
    assert shown["complete"] == 2 and shown["trial0"]["number"] == 0 and "study_history_semantic_miou" in assets
    best = shown["best"]["number"]
    assert (best == 0) == (shown["comparison"] is None)
    if best != 0:
        assert shown["comparison"].endswith(("better", "worse", "indistinguishable"))
    from benchmark.study.store import pick_best, versus_configured  # what `casdm study best` prints

    t0, found = versus_configured(study, params, pick_best(study, params))
    assert t0.number == 0 and (found is None) == (best == 0)
    if found is not None:
        assert found.delta == pytest.approx(study.trials[best].value - study.trials[0].value)
        assert found.low <= found.high and found.verdict in ("better", "worse", "indistinguishable")
    # the CLI's --json: one document on stdout that scripts read
    import json

    (study_dir / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    shown = subprocess.run(["casdm", "study", "show", "--json"], cwd=study_dir, env=cli_env(), capture_output=True,
                           text=True)
    assert [t["number"] for t in json.loads(shown.stdout)["trials"]] == [0, 1], shown.stderr
    picked = json.loads(subprocess.run(["casdm", "study", "best", "--json"], cwd=study_dir, env=cli_env(),
                                       capture_output=True, text=True).stdout)
    assert picked["best"]["number"] == best and picked["trial0"]["number"] == 0
    assert (picked["versus_trial0"] is None) == (best == 0)
    if best != 0:
        assert picked["versus_trial0"]["delta"] == pytest.approx(found.delta)
    # the same command again: nothing left to do, the same study and parent
    again = run_study(params, prepared, study_dir / "judge", log=lambda *a: None)
    assert len(again.trials) == 2 and len([r for r in runs_of(study_dir) if r.data.tags.get("kind") == "study"]) == 1


def test_a_failing_trial_is_recorded_and_the_next_one_runs(study_dir, prepared, monkeypatch):
    import torch

    from benchmark.study.run import run_study
    from benchmark.kinds.casdm import CASDMKind

    calls = {"n": 0}
    real_loss = CASDMKind.loss

    def poisoned(self, *args, **kw):
        calls["n"] += 1
        loss, terms = real_loss(self, *args, **kw)
        return (loss * torch.nan if calls["n"] == 1 else loss), terms

    monkeypatch.setattr(CASDMKind, "loss", poisoned)
    study = run_study(study_params(), prepared, study_dir / "judge", log=lambda *a: None)
    first, *rest = study.trials
    assert first.state == optuna.trial.TrialState.FAIL and "non-finite loss" in first.user_attrs["fail_reason"]
    assert [t.state for t in rest] == [optuna.trial.TrialState.COMPLETE] * 2  # n_trials counts finished ones
    failed = [r for r in runs_of(study_dir) if r.data.tags.get("state") == "FAIL"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED" and "non-finite" in failed[0].data.tags["reason"]


def test_a_killed_study_resumes_with_its_completed_trials(study_dir, prepared):
    from benchmark.study.run import run_study, storage_for

    params = study_params(**{"n_trials": 1})
    study = run_study(params, prepared, study_dir / "judge", log=lambda *a: None)
    done = {t.number: t.values for t in study.trials}
    # a worker that is killed in the middle of its trial
    slow = study_params(**{"train_steps": 400})
    (study_dir / "params.yaml").write_text(yaml.safe_dump(slow.model_dump(mode="json"), sort_keys=False))
    env = cli_env()
    proc = subprocess.Popen(["casdm", "study", "run", "--n-trials", "3", "--data", str(prepared), "--judge",
                             str(study_dir / "judge")], cwd=study_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    storage = storage_for(params)
    deadline = time.time() + 120
    while time.time() < deadline:
        s = optuna.load_study(study_name=params.study.name, storage=storage)
        if any(t.state == optuna.trial.TrialState.RUNNING for t in s.trials):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    time.sleep(2)  # into the training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_study(study_params(**{"n_trials": 2}), prepared, study_dir / "judge", log=lambda *a: None)
    states = [t.state for t in resumed.trials]
    assert resumed.trials[0].values == done[0] and states[0] == optuna.trial.TrialState.COMPLETE
    assert states[1] in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)  # the killed one
    assert states[2] == optuna.trial.TrialState.COMPLETE and len(states) == 3


def test_write_params_changes_only_the_tuned_keys(study_dir, prepared):
    from benchmark.study.run import run_study
    from benchmark.study.store import pick_best
    from benchmark.study.space import write_best

    params_file = study_dir / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    before = yaml.safe_load(params_file.read_text())
    params = study_params(**{"n_trials": 1})
    study = run_study(params, prepared, study_dir / "judge", log=lambda *a: None)
    best = pick_best(study, params)
    written = write_best(params, best, params_file)
    after = yaml.safe_load(params_file.read_text())
    assert set(written) == {"lambda_sp", "ca_variant", "ca_alpha", "ca_boost", "sp_start_step"}
    assert written["sp_start_step"] == round(best.params["sp_start_fraction"] * before["train"]["steps"])
    for key, value in written.items():
        assert after["models"]["casdm"]["training"][key] == value
        after["models"]["casdm"]["training"][key] = before["models"]["casdm"]["training"][key]
    assert after == before  # nothing else changed
    assert "# casdm-bench parameters" in params_file.read_text()  # comments kept


def test_study_section_is_validated():
    with pytest.raises(ConfigError, match="unknown objective 'miou'"):
        tiny_params(study={"objectives": ["miou"]})
    with pytest.raises(ConfigError, match="objective 'fid' should be minimized, not maximized"):
        tiny_params(study={"objectives": ["fid"], "directions": ["maximize"]})
    with pytest.raises(ConfigError, match="search_space: unknown parameter 'lr'"):
        tiny_params(study={"search_space": {"lr": {"type": "float", "low": 0.1, "high": 1}}})
    with pytest.raises(ConfigError, match=r"study\.search_space\.lambda_sp: .*low > 0"):
        tiny_params(study={"search_space": {"lambda_sp": {"type": "float", "low": 0, "high": 1, "log": True}}})
    with pytest.raises(ConfigError, match="study.model 'nope' is not in models"):
        tiny_params(study={"model": "nope"})


def test_hopeless_studies_stop_instead_of_looping(study_dir, prepared, monkeypatch):
    import torch

    from benchmark.study.run import run_study
    from benchmark.kinds.casdm import CASDMKind

    with pytest.raises(ValueError, match="rare_semantic_miou: no rare class in the 2 val maps"):
        # the first 2 validation maps (video 27's, in the tiny fixture) hold no rare class
        run_study(tiny_params(study={"objectives": ["rare_semantic_miou"], "eval_maps": 2}), prepared,
                  study_dir / "judge", log=lambda *a: None)  # before any trial
    real_loss = CASDMKind.loss
    monkeypatch.setattr(CASDMKind, "loss", lambda self, *a, **k: (real_loss(self, *a, **k)[0] * torch.nan, {}))
    with pytest.raises(RuntimeError, match="3 trials in a row failed; stopping. Last: NonFiniteLoss"):
        run_study(study_params(), prepared, study_dir / "judge", log=lambda *a: None)


@pytest.mark.postgres
def test_two_workers_share_one_study_on_postgresql(study_dir, prepared):
    import re

    from benchmark.study.run import load_study
    from tests.postgres import postgres_server

    with postgres_server("optuna", "mlflow") as server:
        params = study_params(**{"n_trials": 4, "storage": f"{server}/optuna"})
        (study_dir / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        env = dict(cli_env(), MLFLOW_TRACKING_URI=f"{server}/mlflow")
        # create the tables once, as a deployment would, so the workers do not race to make them
        mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()
        load_study(params)
        cmd = ["casdm", "study", "run", "--data", str(prepared), "--judge", str(study_dir / "judge")]
        workers = [subprocess.Popen(cmd, cwd=study_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True) for _ in range(2)]
        logs = [w.communicate(timeout=400)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], logs
        ran = [set(map(int, re.findall(r"^trial (\d+)[: ]", log, re.M))) for log in logs]
        study = optuna.load_study(study_name=params.study.name, storage=params.study.storage)
        numbers = [t.number for t in study.trials]
        assert ran[0] and ran[1] and not ran[0] & ran[1], ran  # both worked, never on the same trial
        assert sorted(numbers) == sorted(ran[0] | ran[1]) == list(range(len(numbers)))  # each stored once
        from benchmark.study.store import FINISHED

        from benchmark.study.run import SURPLUS

        assert sum(t.state in FINISHED for t in study.trials) == 4  # exactly n_trials, both workers together
        worked = [t for t in study.trials if t.user_attrs.get("fail_reason") != SURPLUS]
        drawn = [tuple(sorted(t.params.items())) for t in worked]
        assert len(set(drawn)) == len(drawn), drawn  # no two trials share their parameters
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = client.search_runs([client.get_experiment_by_name("casdm-bench").experiment_id])
        parents = {r.info.run_id for r in runs if r.data.tags.get("kind") == "study"}
        trial_runs = sorted(int(r.data.tags["trial"]) for r in runs if r.data.tags.get("kind") == "trial")
        assert len(parents) == 1 and trial_runs == sorted(t.number for t in worked)
        assert {r.data.tags["mlflow.parentRunId"] for r in runs if r.data.tags.get("kind") == "trial"} == parents


def test_pruning_reports_wait_for_ca_sp_and_never_come_at_the_last_step():
    from benchmark.study.run import reports_at
    from benchmark.study.space import trial_params

    params = study_params(train_steps=10)
    p = trial_params(params, {"sp_start_fraction": 0.5}, ["Blood"])
    assert p.models["casdm"].training["sp_start_step"] == 5 and p.train.steps == 10
    assert [s for s in range(1, 11) if reports_at(s, p, params.study)] == [6, 7, 8, 9]
    unsearched = params.study.model_copy(update={"search_space": {"lambda_sp": params.study.search_space["lambda_sp"]}})
    assert [s for s in range(1, 11) if reports_at(s, p, unsearched)] == list(range(1, 10))


def test_tuning_on_the_test_split_is_refused_unless_asked_for():
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match=r"study: .*eval_split: test tunes on the test maps.*allow_test_split"):
        study_params(eval_split="test")
    assert study_params(eval_split="test", allow_test_split=True).study.eval_split == "test"
    assert tiny_params().study.eval_split == "val" and tiny_params().data.split.val_videos


def test_workers_on_one_storage_never_draw_the_same_trial(tmp_path):
    """Two workers' samplers on one SQLite file, asking in turn (as parallel workers do): every trial
    draws its own values. The control: samplers seeded alike (the previous code) repeat each other."""
    from benchmark.study.run import load_study
    from benchmark.study.space import sample_values

    params = study_params(**{"storage": f"sqlite:///{tmp_path / 's.db'}"})
    workers = [load_study(params), load_study(params)]
    # the baseline is enqueued once, by the worker that created the study, not by every worker that found it empty
    assert [(t.state, t.user_attrs.get("baseline")) for t in workers[1].trials] == [
        (optuna.trial.TrialState.WAITING, "params.yaml")]
    drawn = []
    for k in range(6):
        trial = workers[k % 2].ask()
        drawn.append(tuple(sorted(sample_values(trial, params.study.search_space).items())))
    assert len(set(drawn)) == 6, drawn
    assert workers[0].metric_names == list(params.study.objectives)  # named in optuna-dashboard, not "Objective 0"
    again = [load_study(params)]  # a resumed run: new trial numbers, new values
    assert tuple(sorted(sample_values(again[0].ask(), params.study.search_space).items())) not in drawn
    plain = [optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)) for _ in range(2)]
    same = [tuple(sorted(sample_values(s.ask(), params.study.search_space).items())) for s in plain]
    assert same[0] == same[1]  # what every worker did before: one seed, one sequence
