"""Optuna studies of CASDM's loss weights, on the shared trainer, sampler and evaluators.

A trial trains ``study.model`` with sampled values of its training block, samples the evaluation
maps and scores them with the evaluators (the semantic-fidelity judge, FID/KID). Single-objective
studies report an intermediate score every ``report_every`` steps, so a pruner can stop weak trials.

Storage: ``sqlite:///studies/<name>.db`` by default (one worker); ``journal:<file>`` for
several workers on one machine or a shared file system; ``postgresql://...`` for many machines.
Re-running the same command resumes: ``load_if_exists``, and ``n_trials`` counts finished trials of
all workers together. MLflow: one parent run per study (its id kept in the study's user attrs) and
one run per trial tagged ``mlflow.parentRunId``, so workers in other processes nest under it.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import optuna

from benchmark.config import Params
from benchmark.study.scoring import Scorer
from benchmark.study.space import (
    boosted_classes,
    configured_values,
    sample_values,
    training_overrides,
    trial_params,
)
from benchmark.seeds import derive_seed
from benchmark.study.store import FINISHED, STUDIES, save_plots, storage_for

MAX_CONSECUTIVE_FAILURES = 3  # a worker whose trials keep failing stops instead of looping forever
RUNNING = optuna.trial.TrialState.RUNNING
SURPLUS = "surplus: the other workers' trials already make study.n_trials"


class TrialSeeded:
    """A sampler whose random state is re-seeded at every trial from (study.seed, the trial's number).

    Why: every worker built its sampler with the same seed, so parallel workers (and a resumed run)
    drew the same random start-up trials (two workers, 8 trials: trials 4 = 5 = 1). A trial's number
    is unique in the storage, so each trial draws its own values, and a study re-run with the same
    seed, storage and worker count draws the same ones. TPE also runs with ``constant_liar`` (Optuna's
    advice for parallel TPE): a running trial counts as a bad result, so workers do not pile onto one
    point. Relies on the samplers' ``_rng`` (Optuna 4-5's LazyRandomState), checked by tests/test_study.py."""

    base_seed: int

    def before_trial(self, study, trial) -> None:
        super().before_trial(study, trial)
        seed = derive_seed(self.base_seed, trial.number) % 2 ** 32
        for sampler in (self, getattr(self, "_random_sampler", None)):
            if sampler is not None:
                sampler._rng.rng.seed(seed)


class SeededTPE(TrialSeeded, optuna.samplers.TPESampler):
    pass


class SeededRandom(TrialSeeded, optuna.samplers.RandomSampler):
    pass


class SeededNSGAII(TrialSeeded, optuna.samplers.NSGAIISampler):
    pass


def make_sampler(params: Params):
    s = params.study
    if s.sampler == "nsga2":
        sampler = SeededNSGAII(seed=s.seed)
    elif s.sampler == "random":
        sampler = SeededRandom(seed=s.seed)
    else:
        sampler = SeededTPE(seed=s.seed, multivariate=True, constant_liar=True)
    sampler.base_seed = s.seed
    return sampler


def make_pruner(params: Params):
    if params.study.pruner == "none" or len(params.study.objectives) > 1:
        return optuna.pruners.NopPruner()  # Optuna prunes single-objective studies only
    if params.study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=params.study.report_every)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def worker_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def live(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial whose worker still runs: one on this host whose process is gone (``kill -9``) is
    not, and would otherwise block the study until Optuna's heartbeat grace (2 min) fails it. The same
    test as for an MLflow run left RUNNING (``tracking.mark_killed_runs``)."""
    import socket

    from benchmark.tracking import process_alive

    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return True
    return process_alive(int(pid))


def counted(study: optuna.Study, below: int | None = None) -> int:
    """Trials toward n_trials: finished ones and those running in a live worker (numbers < ``below``)."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, RUNNING))
    return sum(1 for t in trials if (below is None or t.number < below) and (t.state != RUNNING or live(t)))


def load_study(params: Params, storage=None) -> optuna.Study:
    """Create or load the study; the process that creates it enqueues params.yaml's values as its
    first trial. Why here: the storage's unique study name makes creation happen once, so two workers
    starting on a fresh study cannot both see it empty and both enqueue the baseline (CI saw that).
    Workers starting together on a fresh SQLite file also race to create its tables (one died with
    ``table study_directions already exists``): the loser retries once."""
    import sqlalchemy.exc

    s = params.study
    kwargs = dict(study_name=s.name, storage=storage_for(params, storage), directions=s.directions,
                  sampler=make_sampler(params), pruner=make_pruner(params))
    study, created = None, False
    for attempt in (0, 1):
        try:
            if study is None:
                try:
                    study, created = optuna.create_study(**kwargs), True
                except optuna.exceptions.DuplicatedStudyError:
                    study = optuna.create_study(**kwargs, load_if_exists=True)
            if created and not study.trials:  # a retry after a locked SQLite file enqueues it still, once
                study.enqueue_trial(configured_values(params), user_attrs={"baseline": "params.yaml"})
            if study.metric_names != list(s.objectives):  # optuna-dashboard's axes: the objectives' names
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(list(s.objectives))
            return study
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if attempt:
                raise
            time.sleep(1.0)


# ------------------------------------------------------------------------------------ tracking
def parent_run(params: Params, study: optuna.Study, storage_url: str) -> str:
    """The study's MLflow parent run, its id kept in the study's user attrs. Workers that start
    together may each create one: all then agree on the earliest created and delete their own."""
    import mlflow

    from benchmark.provenance import git_commit, hash_json
    from benchmark.tracking import connect

    known = study.user_attrs.get("mlflow_parent_run_id")
    if known:
        return known
    client = mlflow.MlflowClient()
    exp = connect(params.tracking)
    key = hash_json([storage_url.split("@")[-1], study.study_name])  # no password in a tag
    tags = {"kind": "study", "study": params.study.name, "study_key": key, "git_commit": git_commit()}
    mine = client.create_run(exp.experiment_id, run_name=f"study {params.study.name}", tags=tags).info.run_id
    candidates = client.search_runs([exp.experiment_id], f"tags.study_key = '{key}' and tags.kind = 'study'",
                                    order_by=["attributes.start_time ASC"], max_results=50)
    winner = min(candidates, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
    if winner != mine:
        client.delete_run(mine)
        return winner
    study.set_user_attr("mlflow_parent_run_id", mine)
    s = params.study
    for k, v in {"objectives": s.objectives, "directions": s.directions, "sampler": s.sampler, "pruner": s.pruner,
                 "train_steps": s.train_steps or params.train.steps, "eval_split": s.eval_split,
                 "search_space": {k: v.model_dump(exclude_none=True) for k, v in s.search_space.items()}}.items():
        client.log_param(mine, k, json.dumps(v))
    return mine  # RUNNING while trials run: run_study ends it


# ------------------------------------------------------------------------------------- running
def reports_at(step: int, trial: Params, s) -> bool:
    """Whether a trial reports an intermediate score (to the pruner) at ``step``: never at its last step
    (the final score is the objective, which no pruner may cut), and, when CA-SP's start is searched,
    only once CA-SP runs (a trial must not be pruned for a stage 2 it has not reached)."""
    if step >= trial.train.steps:
        return False
    training = trial.models[s.model].training
    return "sp_start_fraction" not in s.search_space or training["loss"] != "ca_mse+ca_sp" or \
        step > training["sp_start_step"]


def record_trial(trial: optuna.Trial, params: Params, scorer: Scorer, scores: dict, paths) -> None:
    """What a finished trial leaves to read: its objectives' bootstrap intervals as user attributes (the
    resamples themselves went in as 200 numbers each and widened optuna-dashboard's trial page past
    5,000 px); its loss curve, metrics, sample grid and bootstrap values as Optuna artifacts; the loss
    curve and the grid in its MLflow run too (the trainer runs untracked inside the trial's run)."""
    import csv

    import mlflow

    from benchmark.io import write_json
    from benchmark.metrics.stats import corrected_interval
    from benchmark.study.store import BOOTSTRAP_FILE, artifact_store

    level = params.evaluate.bootstrap.level
    for name, values in scorer.last_bootstrap.items():
        low, high = corrected_interval(values, scores.get(name), level)
        if low is not None:
            trial.set_user_attr(f"{name}_interval", [low, high])
    write_json(paths.model.parent / BOOTSTRAP_FILE, scorer.last_bootstrap)
    store = artifact_store(params.study.name, STUDIES)
    files = [paths.plot, paths.metrics, paths.model / "last_grid.png", paths.model.parent / BOOTSTRAP_FILE]
    for path in files:
        if path.exists():
            optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    with open(paths.plot, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    metrics = [mlflow.entities.Metric(k, float(v), int(time.time() * 1000), int(r["step"]))
               for r in rows for k, v in r.items() if k != "step" and v not in ("", None)]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    if (paths.model / "last_grid.png").exists():
        mlflow.log_artifact(str(paths.model / "last_grid.png"), "samples")


def make_objective(params: Params, scorer: Scorer, parent_id: str, data_dir: Path, log=print):
    import mlflow

    from benchmark.engine.trainer import RunPaths, train
    from benchmark.kinds.registry import make_kind
    from benchmark.tracking import owner_tags, source_tags

    s = params.study
    single = len(s.objectives) == 1
    boosted = boosted_classes(params, scorer.table.rare_names)

    def objective(trial: optuna.Trial):
        values = sample_values(trial, s.search_space)
        overrides = training_overrides(values, params.train.steps, boosted)  # what --write-params writes
        trial.set_user_attr("training", overrides)
        p = trial_params(params, values, boosted)
        folder = STUDIES / s.name / f"trial-{trial.number:04d}"
        trial.set_user_attr("artifacts", str(folder.resolve()))
        tags = {**owner_tags(), **source_tags(), "mlflow.parentRunId": parent_id, "kind": "trial", "study": s.name,
                "trial": str(trial.number), "artifacts": str(folder.resolve())}
        with mlflow.start_run(run_name=f"{s.name} trial {trial.number}", tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.log_params({k: json.dumps(v) if isinstance(v, dict) else v for k, v in trial.params.items()})
            mlflow.log_params({f"training.{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in overrides.items()})

            def hook(step: int, with_ema) -> None:
                if not reports_at(step, p, s):
                    return
                value = with_ema(lambda pipe: scorer(pipe, s.objectives[:1]))[s.objectives[0]]
                mlflow.log_metric(f"intermediate_{s.objectives[0]}", value, step=step)
                if single:
                    trial.report(value, step)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at step {step} ({s.objectives[0]} {value:.4g})")

            try:
                paths = RunPaths(data=data_dir, checkpoints=folder / "checkpoints", model=folder / "model",
                                 metrics=folder / "train.json", plot=folder / "loss.csv")
                m = train(p, s.model, paths, hook=hook, hook_every=s.report_every, track=False)
                mlflow.log_metrics({"final_loss": m["final_loss"], "s_per_step": m["s_per_step"]})
                pipe = make_kind(p, s.model, scorer.table).load_pipeline(paths.model)
                scores = scorer(pipe)
            except optuna.TrialPruned as exc:
                mlflow.set_tags({"state": "PRUNED", "reason": str(exc)})
                mlflow.end_run("KILLED")
                log(f"trial {trial.number}: {exc}")
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                trial.set_user_attr("fail_reason", reason)
                mlflow.set_tags({"state": "FAIL", "reason": reason[:5000]})
                mlflow.end_run("FAILED")
                log(f"trial {trial.number} failed: {reason}")
                raise
            mlflow.log_metrics(scores)
            record_trial(trial, params, scorer, scores, paths)
            mlflow.set_tag("state", "COMPLETE")
            values = [scores[o] for o in s.objectives]
            log(f"trial {trial.number}: " + ", ".join(f"{o} {v:.4g}" for o, v in zip(s.objectives, values))
                + f" with {trial.params}")
            return values[0] if single else values

    return objective


def run_study(params: Params, data_dir: Path, judge_dir: Path, storage: str | None = None,
              n_trials: int | None = None, log=print) -> optuna.Study:
    """Run (or resume) the study until ``n_trials`` trials of all workers have finished."""
    import mlflow

    from benchmark.tracking import connect

    s = params.study
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"--n-trials {n_trials}: expected at least 1 (finished trials wanted, all workers together)")
    if not s.search_space:
        raise ValueError("study.search_space is empty: nothing to tune")
    if params.models[s.model].kind != "casdm":
        raise ValueError(f"study.model {s.model!r} is a {params.models[s.model].kind!r} model; the loss weights "
                         "tuned here belong to a casdm model")
    if s.eval_split == "test":  # allowed only with study.allow_test_split: true
        log("[yellow]warning:[/] the objectives use the test split, which the leaderboard also scores: the tuned "
            "model's leaderboard numbers are biased")
    connect(params.tracking)
    study = load_study(params, storage)
    parent = parent_run(params, study, storage or s.storage or f"sqlite:///{(STUDIES / s.name).resolve()}.db")
    target = n_trials or s.n_trials
    done = sum(t.state in FINISHED for t in study.trials)
    log(f"study {s.name}: {done} of {target} trials finished; MLflow parent run {parent}")
    client = mlflow.MlflowClient()
    try:
        if done < target:
            client.update_run(parent, "RUNNING")  # a resumed study runs again
            optimize(params, study, data_dir, judge_dir, parent, target, log)
    except BaseException as exc:
        client.set_terminated(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if not any(t.state == RUNNING and live(t) for t in study.get_trials(deepcopy=False)):
        client.set_terminated(parent, "FINISHED")  # the last worker to finish ends it
    return report_best(params, study, parent)


def optimize(params: Params, study: optuna.Study, data_dir: Path, judge_dir: Path, parent: str, target: int,
             log=print) -> None:
    """This worker's share of the trials: until the study's finished (or live running) trials make
    ``target``, or too many trials in a row failed."""
    s = params.study
    scorer = Scorer(params, data_dir, judge_dir, STUDIES / s.name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    failures: list[str] = []

    def stop_on_repeated_failure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("fail_reason") != SURPLUS:
            failures.append(trial.user_attrs.get("fail_reason", "unknown"))
        elif trial.state != optuna.trial.TrialState.FAIL:
            failures.clear()
        if len(failures) >= MAX_CONSECUTIVE_FAILURES:
            study.stop()

    objective = make_objective(params, scorer, parent, data_dir, log)

    def within_target(trial: optuna.Trial):
        """n_trials counts the study's trials: a trial started when the others (finished, or running
        in a live worker, every worker's) already make the target is given up before it trains."""
        trial.set_user_attr("worker", worker_id())
        if counted(trial.study, below=trial.number) >= target:
            trial.study.stop()
            trial.set_user_attr("fail_reason", SURPLUS)
            raise RuntimeError(SURPLUS)
        return objective(trial)

    def enough(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if counted(study) >= target:
            study.stop()

    study.optimize(within_target, catch=(Exception,), callbacks=[enough, stop_on_repeated_failure])
    if len(failures) >= MAX_CONSECUTIVE_FAILURES:
        raise RuntimeError(f"study {s.name}: {len(failures)} trials in a row failed; stopping. Last: {failures[-1]}")


def report_best(params: Params, study: optuna.Study, parent: str) -> optuna.Study:
    """The study's plots and best values on its MLflow parent run."""
    import mlflow

    s = params.study
    plots = save_plots(study, params, STUDIES / s.name / "plots")
    client = mlflow.MlflowClient()
    for path in plots:
        client.log_artifact(parent, str(path), "plots")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if finished:
        best = study.best_trials if len(s.objectives) > 1 else [study.best_trial]
        for attempt in (0, 1):
            try:
                client.set_tag(parent, "best_trials", ",".join(str(t.number) for t in best))
                for i, o in enumerate(s.objectives):
                    client.log_metric(parent, f"best_{o}", (max if s.directions[i] == "maximize" else min)(
                        t.values[i] for t in finished))
                break
            except Exception:  # noqa: BLE001 - workers finishing together race to insert the same tag or
                if attempt:  # latest-metric row (an IntegrityError on PostgreSQL); the row now exists: retry once
                    raise
                time.sleep(0.5)
    return study
