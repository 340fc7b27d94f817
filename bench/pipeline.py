"""Time the whole benchmark: ``dvc repro`` of every stage from scratch, per stage and in total.

Run from the repo root with the venv active: ``python -m bench.pipeline [tiny] [--keep DIR]``.
It works on a scratch copy of the project (the working tree's outputs and dvc.lock are left alone;
``--keep DIR`` keeps the copy, e.g. to read its leaderboard). ``--in-place`` times ``dvc repro --force``
in the working tree itself, training checkpoints removed first: every stage runs from scratch and its
outputs and dvc.lock become the committed default run (with the git commit it records). ``--on-top``
applies the profile in the working tree and runs a plain ``dvc repro``: only what the profile adds or
changes runs (``cpu-seeds`` after the default run: seeds 1 and 2), its whole-run time counted as the
default run's reused stages plus these. Budgets (issue 5): default profile
<= 30 min, tiny <= 5 min on 2 CPU cores. Writes ``bench/results/pipeline_<profile>.json``.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmark.io import write_json
from benchmark.provenance import copy_project, git_commit

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = {"default": 30 * 60, "tiny": 5 * 60}


def env_for(dst: Path) -> dict:
    """The copy's environment: offline, its own MLflow store, the venv's scripts first on PATH, and the
    copy's own packages first on the import path (the venv's `casdm` script would otherwise import the
    editable install's checkout, not the copy, and time or score another version of the code)."""
    return dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", MLFLOW_TRACKING_URI=f"sqlite:///{dst}/mlflow.db",
                PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
                PYTHONPATH=os.pathsep.join(filter(None, [str(dst), os.environ.get("PYTHONPATH")])))


def timed_repro(dst: Path, log, *targets: str) -> dict[str, float]:
    """``dvc repro [TARGET ...]`` in the copy, its output into ``log``; seconds per stage that ran."""
    stages, current = {}, None
    proc = subprocess.Popen(["dvc", "repro", *targets], cwd=dst, env=env_for(dst), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        log.write(line)
        log.flush()
        m = re.match(r"Running stage '([^']+)'", line)
        now = time.perf_counter()
        if m:
            if current:
                stages[current] = round(now - stages[current], 1)
            current, stages[m.group(1)] = m.group(1), now
    if current:
        stages[current] = round(time.perf_counter() - stages[current], 1)
    if proc.wait():
        raise SystemExit(f"dvc repro {' '.join(targets)} failed; see {log.name}")
    return stages


def run(dst: Path, profile: str | None, force: bool = False) -> dict:
    commit = git_commit(REPO)  # what produced the run: HEAD as it starts, not as it ends an hour later
    if profile:
        subprocess.run(["casdm", "params", "profile", profile], cwd=dst, env=env_for(dst), check=True)
    t0 = time.perf_counter()
    with (dst / "repro.log").open("w") as log:
        stages = timed_repro(dst, log, *(["--force"] if force else []))
    total = time.perf_counter() - t0
    name = profile or "default"
    budget = BUDGET_S.get(name)  # a profile without a budget (cpu-long, paper) is timed, not judged
    return {"profile": name, "commit": commit, "total_s": round(total, 1), "budget_s": budget,
            "within_budget": None if budget is None else total <= budget, "cpu_count": os.cpu_count(), "stages": stages}


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile", nargs="?")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    ap.add_argument("--in-place", action="store_true", help="dvc repro --force in the working tree itself")
    ap.add_argument("--on-top", action="store_true", help="in the working tree, the profile applied, a plain "
                    "dvc repro: only the stages the profile adds or changes run (cpu-seeds on a finished default "
                    "run: the seeds it adds); the whole run's time is the earlier run's plus these stages'")
    a = ap.parse_args()
    if a.on_top:
        result = run(REPO, a.profile)
        before = REPO / "bench" / "results" / "pipeline_default.json"
        if before.exists():
            import json

            base = json.loads(before.read_text())
            reused = {k: v for k, v in base["stages"].items() if k not in result["stages"]}
            result.update(on_top_of=base["commit"], reused_stages_s=reused,
                          whole_run_s=round(result["total_s"] + sum(reused.values()), 1))
    elif a.in_place:
        import shutil

        for ckpt in (REPO / "runs").glob("**/checkpoints"):  # a from-scratch run must not resume (runs/<model>/seed<N>/)
            shutil.rmtree(ckpt)
        result = run(REPO, a.profile, force=True)
    elif a.keep:
        result = run(copy_project(REPO, a.keep), a.profile)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(copy_project(REPO, Path(tmp)), a.profile)
    t = Table(title=f"dvc repro from scratch, profile {result['profile']}: {result['total_s'] / 60:.1f} min")
    t.add_column("stage")
    t.add_column("s", justify="right")
    for k, v in result["stages"].items():
        t.add_row(k, f"{v:.1f}")
    Console().print(t)
    write_json(REPO / "bench" / "results" / f"pipeline_{result['profile']}.json", result)
    return result


if __name__ == "__main__":
    main()
