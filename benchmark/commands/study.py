"""``casdm study run|show|best``: Optuna studies of the method's loss weights."""
from __future__ import annotations

from pathlib import Path

import typer

from benchmark.commands.common import JSON, PARAMS, console, err, fail, or_fail, print_json, read_params

study_app = typer.Typer(help="Optuna loss-weight studies: run (or resume), show, best.", no_args_is_help=True)
STORAGE = typer.Option(None, "--storage", help="Optuna storage URL (sqlite:///..., postgresql://..., "
                       "journal:<file>); default study.storage, else sqlite:///studies/<name>.db")


@study_app.command("run")
def study_run(params: Path = PARAMS, storage: str = STORAGE,
              data: Path = typer.Option(Path("data/prepared"), help="the prepared dataset"),
              n_trials: int = typer.Option(None, "--n-trials", help="finished trials wanted (default study.n_trials)"),
              judge: Path = typer.Option(Path("segmenters/judge"), help="the semantic-fidelity judge")) -> None:
    """Run the study in params.yaml's `study:` section; the same command resumes it. Start it in
    several shells (journal or PostgreSQL storage) for several workers."""
    from benchmark.study.run import run_study
    from benchmark.study.store import trials_table

    p = read_params(params)
    study = or_fail(run_study, p, data, judge, storage, n_trials, log=err.print)
    console.print(trials_table(study, p))


def load(params: Path, storage: str | None):
    """(params, the study named in them) or a clear error when the study does not exist."""
    import optuna

    from benchmark.study.store import storage_for

    p = read_params(params)
    try:
        return p, optuna.load_study(study_name=p.study.name, storage=or_fail(storage_for, p, storage))
    except KeyError:
        from benchmark.provenance import redact

        fail(f"no study named {p.study.name!r} in {redact(storage or p.study.storage or 'the default storage')}; "
             "run `casdm study run` first")


@study_app.command("show")
def study_show(params: Path = PARAMS, storage: str = STORAGE, as_json: bool = JSON) -> None:
    """Every trial: state, objective values, parameters, why it failed or was pruned."""
    from benchmark.study.store import trial_record, trials_table

    p, study = load(params, storage)
    if as_json:
        print_json({"study": study.study_name, "objectives": p.study.objectives,
                    "trials": [trial_record(t) for t in study.trials]})
        return
    console.print(trials_table(study, p))


@study_app.command("best")
def study_best(params: Path = PARAMS, storage: str = STORAGE,
               trial: int = typer.Option(None, "--trial", help="a Pareto-optimal trial to take (several objectives)"),
               write_params: bool = typer.Option(False, "--write-params",
                                                 help="write its values into params.yaml's tuned model"),
               as_json: bool = JSON) -> None:
    """The best trial (or the Pareto front); with --write-params, into params.yaml for `dvc repro`."""
    from benchmark.config import ConfigError
    from benchmark.study.space import write_best
    from benchmark.study.store import pick_best, trial_record, versus_configured

    p, study = load(params, storage)
    try:
        best = pick_best(study, p, trial)
    except LookupError as exc:
        fail(str(exc))
    if as_json and not write_params:
        t0, found = versus_configured(study, p, best)
        print_json({"best": trial_record(best), "trial0": None if t0 is None else trial_record(t0),
                    "versus_trial0": None if found is None else found.model_dump(),
                    "pareto_front": [t.number for t in study.best_trials] if len(p.study.objectives) > 1 else None})
        return
    if len(p.study.objectives) > 1:
        console.print("Pareto front: " + "; ".join(f"trial {t.number}: {dict(zip(p.study.objectives, t.values))}"
                                                   for t in study.best_trials), soft_wrap=True)
    console.print(f"trial {best.number}: {dict(zip(p.study.objectives, best.values))}", soft_wrap=True)
    t0, found = versus_configured(study, p, best)
    if t0 is None:
        console.print("no trial 0 (the configured weights) to compare with")
    elif t0.number == best.number:
        console.print(f"trial {best.number} is trial 0: the configured weights are the best trial")
    elif found is None:
        console.print(f"vs trial {t0.number} (the configured weights): {best.values[0] - t0.values[0]:+.4f}, "
                      "no interval (a trial without bootstrap values)", soft_wrap=True)
    else:
        console.print(f"vs trial {t0.number} (the configured weights): {found.delta:+.4f} [{found.low:+.4f}, "
                      f"{found.high:+.4f}], p {found.p:.3f}, {found.verdict} ({found.method}; one study, "
                      "not corrected for the trials searched)", soft_wrap=True)
    console.print(f"models.{p.study.model}.training: {best.user_attrs['training']}", soft_wrap=True)
    if write_params:
        try:
            write_best(p, best, params)
        except ConfigError as exc:
            fail(str(exc))
        console.print(f"[green]wrote trial {best.number}'s values into {params}[/]; `dvc repro` trains the tuned model")
