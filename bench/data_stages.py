"""Time the data stages: ``dvc repro`` of synth + prepare from scratch, then again (must be a no-op).

Run from the repo root with the venv active: ``python -m bench.data_stages [PROFILE]``. It works on a
scratch copy of the project, so the working tree's data and dvc.lock are left alone. Prints a table
and writes ``bench/results/data_stages.json``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmark.io import write_json
from benchmark.provenance import copy_project

REPO = Path(__file__).resolve().parents[1]


def main(profile: str | None = None) -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        dst = copy_project(REPO, Path(tmp))
        if profile:
            subprocess.run(["casdm", "params", "profile", profile], cwd=dst, env=env, check=True)
        times = {}
        for run in ("first", "second"):
            t0 = time.perf_counter()
            out = subprocess.run(["dvc", "repro", "prepare"], cwd=dst, env=env, capture_output=True, text=True)
            times[run] = time.perf_counter() - t0
            if out.returncode:
                raise SystemExit(out.stdout + out.stderr)
            if run == "second" and "Running stage" in out.stdout:
                raise SystemExit("second dvc repro re-ran a stage:\n" + out.stdout)
        frames = len(list((dst / "data" / "prepared" / "images").glob("*.png")))
    result = {"profile": profile or "default", "frames": frames, "first_repro_s": round(times["first"], 2),
              "second_repro_s": round(times["second"], 2)}
    t = Table(title="data stages (dvc repro synth + prepare)")
    for k in result:
        t.add_column(k, justify="right")
    t.add_row(*(str(v) for v in result.values()))
    Console().print(t)
    write_json(REPO / "bench" / "results" / f"data_stages_{result['profile']}.json", result)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", nargs="?", default=None, help="a params profile (tiny, cpu-long, paper); default: none")
    main(ap.parse_args().profile)
