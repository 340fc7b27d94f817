"""Optuna studies of CASDM's loss weights, on the shared trainer, sampler and evaluators.

A trial trains ``study.model`` with sampled values of its training block, samples the evaluation
maps and scores them with the evaluators (the semantic-fidelity judge, FID/KID). Single-objective
studies report an intermediate score every ``report_every`` steps, so a pruner can stop weak trials.

Storage: ``sqlite:///runs/studies/<name>.db`` by default (one worker); ``journal:<file>`` for
several workers on one machine or a shared file system; ``postgresql://...`` for many machines.
Re-running the same command resumes: ``load_if_exists``, and ``n_trials`` counts finished trials of
all workers together. MLflow: one parent run per study (its id kept in the study's user attrs) and
one run per trial tagged ``mlflow.parentRunId``, so workers in other processes nest under it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import optuna
import torch

from benchmark.config import Params, parse_params
from benchmark.evaluate import device, extractor, load_judge
from benchmark.metrics.quality import fid_kid, files_features
from benchmark.metrics.segmentation import SegmentationMeter
from casdm.data import PreparedDataset

STUDIES = Path("runs/studies")
MAX_CONSECUTIVE_FAILURES = 3  # a worker whose trials keep failing stops instead of looping forever
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def storage_for(params: Params, override: str | None = None):
    """An Optuna storage from ``--storage``, ``study.storage`` or the default SQLite file."""
    url = override or params.study.storage or f"sqlite:///{STUDIES / params.study.name}.db"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # heartbeats: a trial whose worker was killed is marked FAIL once it has been silent for 2 min
    return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)


def make_sampler(params: Params):
    s = params.study
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, multivariate=True)


def make_pruner(params: Params):
    if params.study.pruner == "none" or len(params.study.objectives) > 1:
        return optuna.pruners.NopPruner()  # Optuna prunes single-objective studies only
    if params.study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=params.study.report_every)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def load_study(params: Params, storage=None) -> optuna.Study:
    s = params.study
    return optuna.create_study(study_name=s.name, storage=storage_for(params, storage), load_if_exists=True,
                               directions=s.directions, sampler=make_sampler(params), pruner=make_pruner(params))


def suggest(trial: optuna.Trial, params: Params) -> dict:
    """Sampled values -> the model's ``training`` overrides (exactly what ``--write-params`` writes)."""
    out = {}
    steps = params.train.steps
    entry = params.models[params.study.model].training
    for key, p in params.study.search_space.items():
        if p.type == "categorical":
            v = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            v = trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
        else:
            v = trial.suggest_float(key, p.low, p.high, log=p.log)
        if key == "ca_boost":  # one multiplier for the boosted (else the rare) classes
            classes = list(entry.ca_boost) or ["Hepatic Vein", "Blood", "Cystic Duct"]
            out["ca_boost"] = {c: v for c in classes}
        elif key == "sp_start_fraction":
            out["sp_start_step"] = int(round(v * steps))
        else:
            out[key] = v
    return out


def trial_params(params: Params, overrides: dict) -> Params:
    """params with the tuned model's training block overridden and the trial's step budget."""
    data = params.model_dump(mode="json")
    name, s = params.study.model, params.study
    data["models"][name]["training"].update(overrides)
    if s.train_steps is not None:
        scale = s.train_steps / params.train.steps
        if "sp_start_step" in data["models"][name]["training"]:
            data["models"][name]["training"]["sp_start_step"] = int(data["models"][name]["training"]["sp_start_step"] * scale)
        data["train"].update(steps=s.train_steps, checkpoint_every=s.train_steps,
                             sample_every=s.train_steps, warmup_steps=min(data["train"]["warmup_steps"], s.train_steps))
    return parse_params(data, f"study {s.name} trial")


class Scorer:
    """The objectives of one pipeline on the study's evaluation maps (fixed maps and noise seeds)."""

    def __init__(self, params: Params, data_dir: Path, judge_dir: Path, work: Path):
        s = params.study
        split = s.eval_split
        try:
            data = PreparedDataset(data_dir, split)
        except ValueError:
            raise ValueError(f"study.eval_split {split!r}: {data_dir} has no {split} frames; set data.split.val_videos "
                             "(video split) or data.split.val_fraction (random split), or study.eval_split: test") from None
        n = len(data) if s.eval_maps is None else min(s.eval_maps, len(data))
        self.items = [data[i] for i in range(n)]
        self.table, self.params, self.work = data.table, params, Path(work)
        present = set(torch.cat([it["labels"].flatten() for it in self.items]).unique().tolist())
        if "rare_semantic_miou" in s.objectives and not present & set(data.table.rare_ids):
            raise ValueError(f"rare_semantic_miou: no rare class in the {n} {split} maps of the study; raise "
                             "study.eval_maps or choose another objective")
        self.judge = load_judge(judge_dir).to(device()) if any("semantic" in o for o in s.objectives) else None
        self.real = None
        if any(o in ("fid", "kid") for o in s.objectives):
            self.extractor = extractor(params)
            files = [Path(data_dir) / "images" / f"{it['id']}.png" for it in self.items]
            self.real = files_features(files, self.extractor, device(), params.evaluate.fid.batch_size)

    def images(self, pipe) -> torch.Tensor:
        recipe = self.params.models[self.params.study.model].sampling
        out = []
        for s in range(0, len(self.items), self.params.sample.batch_size):
            chunk = self.items[s: s + self.params.sample.batch_size]
            labels = torch.stack([it["labels"] for it in chunk]).to(pipe.device)
            gens = [torch.Generator(device=pipe.device).manual_seed(s + k) for k in range(len(chunk))]
            out.append(pipe(labels, recipe.num_inference_steps, recipe.guidance_scale, generator=gens,
                            output_type="pt").images.cpu())
        return torch.cat(out)  # [N, 3, H, W] in 0..1

    @torch.no_grad()
    def __call__(self, pipe, objectives: list[str] | None = None) -> dict[str, float]:
        objectives = objectives or self.params.study.objectives
        images, scores = self.images(pipe), {}
        if any("semantic" in o for o in objectives):
            meter = SegmentationMeter(self.table, device())
            labels = torch.stack([it["labels"] for it in self.items])
            for s in range(0, len(images), 16):
                meter.update(self.judge(images[s:s + 16].to(device()) * 2 - 1), labels[s:s + 16].to(device()))
            seg = meter.compute()
            if seg.rare_miou is None and "rare_semantic_miou" in objectives:
                raise ValueError(f"rare_semantic_miou: no rare class in the {len(self.items)} {self.params.study.eval_split} "
                                 "maps of the study; raise study.eval_maps or choose another objective")
            scores["semantic_miou"], scores["rare_semantic_miou"] = seg.miou, seg.rare_miou
        if any(o in ("fid", "kid") for o in objectives):
            from PIL import Image

            import tempfile

            self.work.mkdir(parents=True, exist_ok=True)
            # a folder of this call's own: workers of one study share `work`, and must not
            # overwrite each other's images while clean-fid reads them
            with tempfile.TemporaryDirectory(prefix="eval-images-", dir=self.work) as tmp:
                files = []
                for it, img in zip(self.items, (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)):
                    files.append(Path(tmp) / f"{it['id']}.png")
                    Image.fromarray(img.numpy()).save(files[-1])
                q = fid_kid(files_features(files, self.extractor, device()), self.real, self.extractor)
            scores["fid"], scores["kid"] = q["fid"], q["kid"]
        return {k: float(v) for k, v in scores.items() if v is not None}


# ------------------------------------------------------------------------------------ tracking
def parent_run(params: Params, study: optuna.Study, storage_url: str) -> str:
    """The study's MLflow parent run, its id kept in the study's user attrs. Workers that start
    together may each create one: all then agree on the earliest created and delete their own."""
    import mlflow

    from benchmark.tracking import git_commit, hash_json

    known = study.user_attrs.get("mlflow_parent_run_id")
    if known:
        return known
    client = mlflow.MlflowClient()
    exp = mlflow.set_experiment(params.tracking.experiment)
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
    client.set_terminated(mine, "FINISHED")
    return mine


def save_plots(study: optuna.Study, params: Params, folder: Path) -> list[Path]:
    """Optimization history, parameter importances and (several objectives) the Pareto front, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    s, written = params.study, []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {}
    for i, name in enumerate(s.objectives):
        target = (lambda t, i=i: t.values[i]) if len(s.objectives) > 1 else None
        plots[f"history_{name}"] = lambda target=target, name=name: ovm.plot_optimization_history(
            study, target=target, target_name=name)
        if len(complete) >= 2 and s.search_space:
            plots[f"importance_{name}"] = lambda target=target, name=name: ovm.plot_param_importances(
                study, target=target, target_name=name)
    if len(s.objectives) > 1 and complete:
        plots["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=s.objectives)
    for name, make in plots.items():
        try:
            ax = make()
        except (ValueError, RuntimeError) as exc:  # e.g. importances with a constant objective
            (folder / f"{name}.txt").write_text(f"not plotted: {exc}\n")
            continue
        fig = (ax[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(folder / f"{name}.png")
    return written


# ------------------------------------------------------------------------------------- running
def current_values(params: Params) -> dict:
    """The tuned model's values in params.yaml, as search-space values (a study's trial 0, so every
    study says whether tuning beats the configured, i.e. the paper's, weights)."""
    t, out = params.models[params.study.model].training, {}
    for key, p in params.study.search_space.items():
        if key == "ca_boost":
            v = next(iter(t.ca_boost.values()), 1.0)
        elif key == "sp_start_fraction":
            v = t.sp_start_step / params.train.steps
        else:
            v = getattr(t, key)
        if p.type == "categorical" and v not in p.choices or p.type != "categorical" and not p.low <= v <= p.high:
            continue  # outside the search space: let the sampler choose
        out[key] = v
    return out


def make_objective(params: Params, scorer: Scorer, parent_id: str, data_dir: Path, log=print):
    import mlflow

    from casdm.registry import make_kind
    from casdm.train import RunPaths, train

    s = params.study
    single = len(s.objectives) == 1

    def objective(trial: optuna.Trial):
        overrides = suggest(trial, params)
        trial.set_user_attr("training", overrides)
        p = trial_params(params, overrides)
        folder = STUDIES / s.name / f"trial-{trial.number:04d}"
        trial.set_user_attr("artifacts", str(folder.resolve()))
        tags = {"mlflow.parentRunId": parent_id, "kind": "trial", "study": s.name, "trial": str(trial.number),
                "artifacts": str(folder.resolve())}
        with mlflow.start_run(run_name=f"{s.name} trial {trial.number}", tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.log_params({k: json.dumps(v) if isinstance(v, dict) else v for k, v in trial.params.items()})
            mlflow.log_params({f"training.{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in overrides.items()})

            def hook(step: int, with_ema) -> None:
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

    s = params.study
    if not s.search_space:
        raise ValueError("study.search_space is empty: nothing to tune")
    if params.models[s.model].kind != "casdm":
        raise ValueError(f"study.model {s.model!r} is a {params.models[s.model].kind!r} model; the loss weights "
                         "tuned here belong to a casdm model")
    if s.eval_split == "test":
        log("[yellow]note:[/] the objectives use the test split, which the leaderboard also scores; "
            "set data.split.val_videos and study.eval_split: val for an unbiased study")
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", params.tracking.uri))
    mlflow.set_experiment(params.tracking.experiment)
    study = load_study(params, storage)
    parent = parent_run(params, study, storage or s.storage or f"sqlite:///{(STUDIES / s.name).resolve()}.db")
    if not study.trials:
        study.enqueue_trial(current_values(params), user_attrs={"baseline": "params.yaml"})
    target = n_trials or s.n_trials
    done = sum(t.state in FINISHED for t in study.trials)
    log(f"study {s.name}: {done} of {target} trials finished; MLflow parent run {parent}")
    if done < target:
        scorer = Scorer(params, data_dir, judge_dir, STUDIES / s.name)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        failures: list[str] = []

        def stop_on_repeated_failure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.state == optuna.trial.TrialState.FAIL:
                failures.append(trial.user_attrs.get("fail_reason", "unknown"))
            else:
                failures.clear()
            if len(failures) >= MAX_CONSECUTIVE_FAILURES:
                study.stop()

        study.optimize(make_objective(params, scorer, parent, data_dir, log), catch=(Exception,),
                       callbacks=[optuna.study.MaxTrialsCallback(target, states=FINISHED), stop_on_repeated_failure])
        if len(failures) >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"study {s.name}: {len(failures)} trials in a row failed; stopping. Last: {failures[-1]}")
    plots = save_plots(study, params, STUDIES / s.name / "plots")
    client = mlflow.MlflowClient()
    for path in plots:
        client.log_artifact(parent, str(path), "plots")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if finished:
        best = study.best_trials if len(s.objectives) > 1 else [study.best_trial]
        client.set_tag(parent, "best_trials", ",".join(str(t.number) for t in best))
        for i, o in enumerate(s.objectives):
            client.log_metric(parent, f"best_{o}", (max if s.directions[i] == "maximize" else min)(
                t.values[i] for t in finished))
    return study


def pick_best(study: optuna.Study, params: Params, number: int | None = None) -> optuna.trial.FrozenTrial:
    """The best trial (single objective), or a Pareto-optimal one: ``number``, else the best on the
    first objective among the Pareto front."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise LookupError(f"study {study.study_name!r} has no complete trial yet")
    if number is not None:
        for t in complete:
            if t.number == number:
                return t
        raise LookupError(f"trial {number} of study {study.study_name!r} is not complete "
                          f"(complete: {[t.number for t in complete]})")
    if len(params.study.objectives) == 1:
        return study.best_trial
    sign = 1 if params.study.directions[0] == "maximize" else -1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


def write_best(params: Params, trial: optuna.trial.FrozenTrial, params_path: Path) -> dict:
    """Write the trial's training values into params.yaml's tuned model (nothing else changes)."""
    from benchmark.config import load_params, update_params

    overrides = dict(trial.user_attrs["training"])
    if "sp_start_fraction" in trial.params:  # a fraction of the steps of the file written to
        overrides["sp_start_step"] = int(round(trial.params["sp_start_fraction"] * load_params(params_path).train.steps))
    update_params({"models": {params.study.model: {"training": overrides}}}, params_path)
    return overrides
