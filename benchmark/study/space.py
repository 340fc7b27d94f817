"""A study's search space against the tuned model's ``training:`` block: the one place that turns
sampled values into training options and back, and converts CA-SP's start between a fraction of the
steps (what is searched) and a step (what params.yaml holds).

Why a fraction: a trial trains ``study.train_steps`` steps, the leaderboard's model ``train.steps``;
the same fraction means the same schedule at both lengths.
"""
from __future__ import annotations

import optuna

from benchmark.config import Params, SearchParam, parse_params


def sp_start_step(fraction: float, steps: int) -> int:
    return int(round(fraction * steps))


def sp_start_fraction(step: int, steps: int) -> float:
    return step / steps


def sample_values(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict:
    """One value per search dimension (Optuna ``suggest_*``)."""
    out = {}
    for key, p in space.items():
        if p.type == "categorical":
            out[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            out[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
        else:
            out[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
    return out


def training_overrides(values: dict, steps: int, boosted: list[str]) -> dict:
    """Search values -> the model's ``training`` overrides for a run of ``steps`` steps. ``ca_boost`` is
    one multiplier for the ``boosted`` classes; ``sp_start_fraction`` becomes ``sp_start_step``."""
    out = {}
    for key, v in values.items():
        if key == "ca_boost":
            out["ca_boost"] = {c: v for c in boosted}
        elif key == "sp_start_fraction":
            out["sp_start_step"] = sp_start_step(v, steps)
        else:
            out[key] = v
    return out


def boosted_classes(params: Params, rare: list[str]) -> list[str]:
    """The classes ``ca_boost`` multiplies: those the tuned model boosts, else the rare classes."""
    return list(params.models[params.study.model].training["ca_boost"]) or list(rare)


def configured_values(params: Params) -> dict:
    """The tuned model's values in params.yaml as search values (a study's trial 0, so every study says
    whether tuning beats the configured, i.e. the paper's, weights). Values outside the space are left
    to the sampler."""
    t, out = params.models[params.study.model].training, {}
    for key, p in params.study.search_space.items():
        if key == "ca_boost":
            v = next(iter(t["ca_boost"].values()), 1.0)
        elif key == "sp_start_fraction":
            v = sp_start_fraction(t["sp_start_step"], params.train.steps)
        else:
            v = t[key]
        if p.type == "categorical" and v not in p.choices or p.type != "categorical" and not p.low <= v <= p.high:
            continue
        out[key] = v
    return out


def trial_params(params: Params, values: dict, boosted: list[str]) -> Params:
    """params with the tuned model's training block set from ``values`` and the trial's step budget;
    CA-SP starts at the same fraction of the trial's steps as it would of the configured ones."""
    s = params.study
    steps = s.train_steps or params.train.steps
    data = params.model_dump(mode="json")
    training = data["models"][s.model]["training"]
    fraction = values.get("sp_start_fraction", sp_start_fraction(training["sp_start_step"], params.train.steps))
    training.update(training_overrides(values, steps, boosted), sp_start_step=sp_start_step(fraction, steps))
    if s.train_steps is not None:
        data["train"].update(steps=steps, warmup_steps=min(data["train"]["warmup_steps"], steps))
        data["runtime"].update(checkpoint_every=steps, sample_every=steps)
    return parse_params(data, f"study {s.name} trial")


def write_best(params: Params, trial: optuna.trial.FrozenTrial, params_path) -> dict:
    """Write the trial's training values into params.yaml's tuned model (nothing else changes); CA-SP's
    start is taken as a fraction of the steps of the file written to."""
    from benchmark.config import load_params, update_params

    overrides = dict(trial.user_attrs["training"])
    if "sp_start_fraction" in trial.params:
        overrides["sp_start_step"] = sp_start_step(trial.params["sp_start_fraction"], load_params(params_path).train.steps)
    update_params({"models": {params.study.model: {"training": overrides}}}, params_path)
    return overrides
