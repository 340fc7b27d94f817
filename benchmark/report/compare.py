"""``casdm report compare A B``: two states of the suite side by side: every leaderboard metric with
its delta (B - A), the params that differ, the sample rows of both.

A state is named the way users name them: ``workspace`` (the files on disk), a git revision
(``main``, ``HEAD~1``, a sha), a DVC experiment (``dvc exp show`` names it), or an MLflow leaderboard
run id (32 hex digits). Git revisions and experiments are read with ``git show`` (the leaderboard's
metrics, params.yaml and the report's assets are git-tracked, ``cache: false``); an MLflow run from
the artifacts the leaderboard and report stages log to it.
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmark.io import read_json
from benchmark.metrics.stats import higher_is_better
from benchmark.report.sections import params_diff
from benchmark.results import LeaderboardRow

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
FILES = {"leaderboard": "metrics/leaderboard.json", "params": "params.yaml", "samples": "reports/assets/samples.png"}


@dataclass
class State:
    spec: str
    kind: str  # workspace | git revision | DVC experiment | MLflow run
    ref: str  # the commit or run id it resolved to
    leaderboard: dict[str, LeaderboardRow]  # built from the flat file (metrics/leaderboard.json) it was read from
    params: dict
    samples: bytes | None

    def __post_init__(self):
        self.leaderboard = {name: row if isinstance(row, LeaderboardRow) else LeaderboardRow.from_flat(name, row)
                            for name, row in self.leaderboard.items()}


def _git(root: Path, *args: str, binary: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=not binary, timeout=30)


def _commit_of(root: Path, spec: str) -> tuple[str, str] | None:
    r = _git(root, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    if r.returncode == 0:
        return r.stdout.strip(), "git revision"
    try:
        from dvc.repo import Repo
        from dvc.repo.experiments.utils import resolve_name

        with Repo(str(root)) as repo:
            ref = resolve_name(repo.scm, spec).get(spec)
            if ref is not None:
                return repo.scm.get_ref(str(ref)), "DVC experiment"
    except Exception:  # not a DVC repository, or no experiments: then it is simply not an experiment
        return None
    return None


def _from_commit(root: Path, spec: str, sha: str, kind: str) -> State:
    def show(path: str, binary: bool = False):
        r = _git(root, "show", f"{sha}:{path}", binary=binary)
        return r.stdout if r.returncode == 0 else None

    board = show(FILES["leaderboard"])
    if board is None:
        raise FileNotFoundError(f"{spec} ({kind} {sha[:10]}): no {FILES['leaderboard']} committed there; "
                                "expected a state whose leaderboard stage ran")
    params = show(FILES["params"])
    return State(spec, kind, sha, json.loads(board), yaml.safe_load(params) if params else {},
                 show(FILES["samples"], binary=True))


def _from_mlflow(spec: str, tracking) -> State:
    import mlflow

    from benchmark.tracking import connect

    connect(tracking)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(spec)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"{spec}: no MLflow run with this id in {mlflow.get_tracking_uri()}") from None
    if run.data.tags.get("kind") != "leaderboard":
        raise ValueError(f"{spec}: MLflow run {run.info.run_name!r} is not a leaderboard run "
                         f"(tag kind={run.data.tags.get('kind')!r}); expected the leaderboard stage's run")
    with tempfile.TemporaryDirectory() as tmp:
        def get(path: str) -> Path | None:
            try:
                return Path(client.download_artifacts(spec, path, tmp))
            except Exception:  # an artifact a run of an older version did not log
                return None

        rows, params, samples = get("leaderboard_rows.json"), get("params.json"), get("report/assets/samples.png")
        if rows is None:
            raise FileNotFoundError(f"{spec}: the leaderboard run has no leaderboard_rows.json artifact "
                                    "(logged by the leaderboard stage since the report stage came in)")
        return State(spec, "MLflow run", spec, read_json(rows, "the leaderboard rows the MLflow run logged"),
                     read_json(params, "the params the MLflow run logged") if params else {},
                     samples.read_bytes() if samples else None)


def resolve(spec: str, root: Path, tracking) -> State:
    """The state a user's name points to; an unknown name is an error saying what was tried."""
    if spec == "workspace":
        files = {k: root / v for k, v in FILES.items()}
        if not files["leaderboard"].exists():
            raise FileNotFoundError(f"{files['leaderboard']}: missing; run `dvc repro` first")
        return State(spec, "workspace", "workspace", read_json(files["leaderboard"], "the rows the leaderboard stage writes"),
                     yaml.safe_load(files["params"].read_text()),
                     files["samples"].read_bytes() if files["samples"].exists() else None)
    if RUN_ID.match(spec):
        return _from_mlflow(spec, tracking)
    found = _commit_of(root, spec)
    if found is None:
        raise ValueError(f"{spec!r}: not a git revision, a DVC experiment or an MLflow run id "
                         f"(tried `git rev-parse {spec}` and the experiments of {root})")
    return _from_commit(root, spec, *found)


def metric_rows(a: State, b: State) -> list[dict]:
    """Every numeric leaderboard value of the rows both states have, A and B and B - A."""
    out = []
    for model in [m for m in a.leaderboard if m in b.leaderboard]:
        ra, rb = a.leaderboard[model], b.leaderboard[model]
        for col, ca in ra.cells.items():
            cb = rb.cells.get(col)
            for part in ("value", "std", "low", "high"):  # a spread or an interval bound has no better side
                va, vb = getattr(ca, part), None if cb is None else getattr(cb, part)
                if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
                    d = vb - va
                    better = None if d == 0 or part != "value" else (d > 0) == higher_is_better(col)
                    out.append({"model": model, "metric": col if part == "value" else f"{col}_{part}", "a": va,
                                "b": vb, "delta": d,
                                "direction": "-" if better is None else ("B better" if better else "A better")})
    return out


def compare(spec_a: str, spec_b: str, root: Path, tracking) -> tuple[dict, dict[str, bytes]]:
    a, b = resolve(spec_a, root, tracking), resolve(spec_b, root, tracking)
    assets = {k: s.samples for k, s in (("samples_a", a), ("samples_b", b)) if s.samples}
    only = {"a": sorted(set(a.leaderboard) - set(b.leaderboard)), "b": sorted(set(b.leaderboard) - set(a.leaderboard))}
    ctx = {"a": {"spec": a.spec, "kind": a.kind, "ref": a.ref}, "b": {"spec": b.spec, "kind": b.kind, "ref": b.ref},
           "metrics": metric_rows(a, b), "params": params_diff(a.params, b.params), "only": only,
           "has_samples": {"a": a.samples is not None, "b": b.samples is not None}}
    return ctx, assets
