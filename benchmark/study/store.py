"""Reading a study: where it is stored, its best trial, its table and plots. What the report and
``casdm study show / best`` need, without the runner (trainer, scorer) that ``run.py`` adds."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import optuna

from benchmark.config import Params
from benchmark.io import write_text

STUDIES = Path("studies")  # the default storage's folder; the report stage reads it from dvc.yaml
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def storage_url(params: Params, override: str | None = None, folder: Path = STUDIES) -> str:
    """``--storage``, else ``study.storage``, else the default SQLite file in ``folder``."""
    return override or params.study.storage or f"sqlite:///{Path(folder) / params.study.name}.db"


def storage_for(params: Params, override: str | None = None, folder: Path = STUDIES):
    """An Optuna storage from ``--storage``, ``study.storage`` or the default SQLite file in ``folder``."""
    url = storage_url(params, override, folder)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # heartbeats: a trial whose worker was killed is marked FAIL once it has been silent for 2 min
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 4; chosen, so not a warning
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    except Exception as exc:  # sqlalchemy's and the driver's errors: a server down, a bad URL, a missing driver
        from benchmark.provenance import redact

        reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise RuntimeError(f"study storage {redact(url)} (--storage, else params.yaml study.storage) cannot be used: "
                           f"{type(exc).__name__}: {reason}") from None


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
            write_text(folder / f"{name}.txt", f"not plotted: {exc}\n")
            continue
        fig = (ax[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(folder / f"{name}.png")
    return written


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


BOOTSTRAP_FILE = "bootstrap.json"  # a trial's objective on every bootstrap resample (an Optuna artifact)


def artifact_store(name: str, folder: Path = STUDIES):
    """The study's Optuna artifact store: its trials' files (loss curve, metrics, sample grid, bootstrap
    values) beside the trial folders, ``<studies>/<name>/artifacts``; ``optuna-dashboard --artifact-dir``
    serves them. A study whose workers run on several machines keeps each trial's files on its worker's
    machine, as it keeps the trial folders (share ``studies/`` to see them all)."""
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(folder) / name / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def trial_bootstrap(trial: optuna.trial.FrozenTrial, name: str, folder: Path = STUDIES) -> dict[str, list]:
    """The trial's bootstrap values, read back from its ``bootstrap.json`` artifact; {} where the
    artifact is not in this machine's store."""
    import json

    from optuna.artifacts import download_artifact
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX  # the system-attr key Optuna files metas under

    for key, value in trial.system_attrs.items():
        meta = json.loads(value) if key.startswith(ARTIFACTS_ATTR_PREFIX) else {}
        if meta.get("filename") == BOOTSTRAP_FILE:
            store = artifact_store(name, folder)
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    download_artifact(artifact_store=store, artifact_id=meta["artifact_id"],
                                      file_path=str(Path(tmp) / BOOTSTRAP_FILE))
                except FileNotFoundError:  # uploaded on another machine
                    return {}
                return json.loads((Path(tmp) / BOOTSTRAP_FILE).read_text())
    return {}


def versus_configured(study: optuna.Study, params: Params, best: optuna.trial.FrozenTrial, folder: Path = STUDIES):
    """The best trial against trial 0 (the configured weights) on the first objective: the paired bootstrap
    over the study's validation maps (both trials scored the same resamples), or None where trial 0 is the
    best, is missing, or either lacks its bootstrap values. Returns (trial 0, Difference | None)."""
    from benchmark.metrics.stats import paired_bootstrap

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    t0 = next((t for t in done if t.user_attrs.get("baseline")), None)
    if t0 is None or t0.number == best.number:
        return t0, None
    objective, name = params.study.objectives[0], params.study.name
    return t0, paired_bootstrap(trial_bootstrap(best, name, folder).get(objective, []),
                                trial_bootstrap(t0, name, folder).get(objective, []),
                                best.values[0] - t0.values[0], objective, params.evaluate.bootstrap.level)


def trial_record(t: optuna.trial.FrozenTrial) -> dict:
    """A trial as ``--json`` prints it: number, state, values, parameters, user attributes."""
    return {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
            "user_attrs": t.user_attrs,
            "duration_s": None if t.duration is None else t.duration.total_seconds()}


def trials_table(study: optuna.Study, params: Params):
    """Every trial as a rich Table: state, objective values, parameters, why it failed or was pruned."""
    from rich.table import Table

    t = Table(title=f"study {study.study_name}: {len(study.trials)} trials")
    for c in ("#", "state", *params.study.objectives, "params", "note"):
        t.add_column(c, justify="right" if c in ("#", *params.study.objectives) else "left")
    for tr in study.trials:
        values = [f"{v:.4g}" for v in tr.values] if tr.values else ["-"] * len(params.study.objectives)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in tr.params.items())
        note = tr.user_attrs.get("fail_reason") or tr.system_attrs.get("fail_reason", "")
        if tr.state.name == "PRUNED" and tr.intermediate_values:
            note = f"pruned at step {max(tr.intermediate_values)}"
        t.add_row(str(tr.number), tr.state.name, *values, shown, note[:80])
    return t
