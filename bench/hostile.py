"""The hostile-input sweep of issue 27, re-runnable: every bad value, file or URL of that issue that a
command meets before any training, each run as a user would run it, and what the command did.

Usage (repo root): ``python -m bench.hostile [--out bench/results/hostile.json]``. Each case runs in a
scratch folder holding a copy of params.yaml with one thing broken. A case holds when the command exits
1 with no traceback, in at most two lines, naming the culprit (``names``). The cases a unit test covers
better (escaped HTML, redacted passwords in MLflow, parallel study workers, broken prepared files,
planted weights) are listed in ``COVERED`` with the test that holds them.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmark.io import write_json

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    name: str
    argv: list[str]
    names: str  # what the one line must contain: the key, file, value or (redacted) URL
    edit: tuple[str, str] | tuple[tuple[str, str], ...] | None = None  # (old, new) in params.yaml, or several
    env: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # name -> bytes written into the scratch folder first
    params_file: str = "params.yaml"  # where the (edited) params go


def check(*extra: str) -> list[str]:
    return ["casdm", "params", "check", *extra]


BOOST = "ca_boost: {Hepatic Vein: 1.5, Blood: 1.5, Cystic Duct: 1.5}"

CASES = [
    Case("guidance_scale inf", check(), "guidance_scale", ("guidance_scale: 1.0", "guidance_scale: .inf")),
    Case("lr inf", check(), "train.lr", ("  lr: 0.004", "  lr: .inf")),
    Case("weight_decay nan", check(), "weight_decay", ("weight_decay: 0.000001", "weight_decay: .nan")),
    Case("adam_betas 1.0", check(), "adam_betas", ("adam_betas: [0.95, 0.999]", "adam_betas: [0.95, 1.0]")),
    Case("steps 10**12", check(), "train.steps", ("  steps: 280", "  steps: 1000000000000")),
    Case("num_train_timesteps 10**9", check(), "num_train_timesteps",
         ("num_train_timesteps: 1000", "num_train_timesteps: 1000000000")),
    Case("resolution 36", check(), "data.resolution", ("  resolution: 64", "  resolution: 36")),
    Case("resolution 48, paper preset (halves 5 times)", check(), "data.resolution 48: preset 'paper'",
         (("  resolution: 64", "  resolution: 48"), ("  preset: cpu", "  preset: paper"))),
    Case("duplicate YAML key", check(), "num_train_timesteps",
         ("  num_train_timesteps: 1000", "  num_train_timesteps: 1000\n  num_train_timesteps: 500")),
    Case("params not UTF-8", check("--params", "latin.yaml"), "latin.yaml",
         files={"latin.yaml": "title: caf\xe9\n".encode("latin-1")}),
    Case("params is a folder", check("--params", "folder.yaml"), "folder.yaml", files={"folder.yaml/": b""}),
    Case("error names --params file", check("--params", "other.yaml"), "other.yaml: invalid parameters",
         ("  lr: 0.004", "  lr: -1"), params_file="other.yaml"),
    Case("unknown profile", ["casdm", "params", "profile", "nope"], "nope"),
    Case("tracking bogus://", ["casdm", "leaderboard"], "bogus://", env={"MLFLOW_TRACKING_URI": "bogus://x"}),
    Case("tracking file:///nonexistent", ["casdm", "leaderboard"], "nonexistent",
         env={"MLFLOW_TRACKING_URI": "file:///nonexistent/mlruns"}),
    Case("tracking postgresql :1, password", ["casdm", "leaderboard"], "postgresql://casdm:***@127.0.0.1:1",
         env={"MLFLOW_TRACKING_URI": "postgresql://casdm:s3cr3t@127.0.0.1:1/mlflow"}),
    Case("study storage down, password", ["casdm", "study", "show"], "***@127.0.0.1:1",
         ("storage: null", "storage: postgresql://casdm:s3cr3t@127.0.0.1:1/optuna")),
    Case("study --n-trials 0", ["casdm", "study", "run", "--n-trials", "0"], "--n-trials"),
    Case("study --n-trials -1", ["casdm", "study", "run", "--n-trials", "-1"], "--n-trials -1"),
    Case("study storage not a URL", ["casdm", "study", "show"], "notaurl://x", ("storage: null", "storage: notaurl://x")),
    Case("ca_boost NaN", check("--params", "other.yaml"), "other.yaml: models.casdm.training.ca_boost",
         (BOOST, BOOST.replace("1.5", ".nan", 1)), params_file="other.yaml"),
    Case("ca_boost -100", check(), "ca_boost", (BOOST, BOOST.replace("1.5", "-100", 1))),
    Case("ca_boost unknown class", check("--params", "other.yaml"), "other.yaml: models.casdm.training.ca_boost: "
         "unknown class 'Hepatic Veins'", (BOOST, BOOST.replace("Hepatic Vein", "Hepatic Veins")),
         params_file="other.yaml"),
    Case("maps generate --out foreign folder", ["casdm", "maps", "generate", "--prompt", "Liver", "--out", "mine"],
         "notes.txt", files={"mine/notes.txt": b"a colleague's notes"}),
    Case("maps generate --out .", ["casdm", "maps", "generate", "--prompt", "Liver", "--out", "."], "working directory"),
    Case("maps generate --out a file", ["casdm", "maps", "generate", "--prompt", "Liver", "--out", "afile"], "afile",
         files={"afile": b"x"}),
]

COVERED = {
    "HTML escaping (branch, title, class, model names)": "tests/test_report.py",
    "password in study.storage: MLflow params, report, errors": "tests/test_report.py, tests/test_study.py",
    "two workers, SQLite and PostgreSQL: no repeated trial": "tests/test_study.py",
    "broken prepared files (truncated PNG, class id, size, JSON, frames.csv)": "tests/test_hostile.py",
    "prompt files (BOM, Latin-1, UTF-16), a class-less or 10,000-character prompt": "tests/test_hostile.py",
    "planted /tmp Inception weights, SHA-256 pin, weights_only": "tests/test_quality.py, tests/test_train.py",
    "read-only data root, full disk": "tests/test_pipeline.py",
}


def run(case: Case, work: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=work))
    params = (REPO / "params.yaml").read_text()
    edits = [] if case.edit is None else [case.edit] if isinstance(case.edit[0], str) else list(case.edit)
    for old, new in edits:
        if old not in params:
            raise SystemExit(f"bench.hostile: case {case.name!r}: {old!r} not in params.yaml (update the case)")
        params = params.replace(old, new, 1)
    (folder / case.params_file).write_text(params)
    for name, data in case.files.items():
        path = folder / name
        if name.endswith("/"):
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", **case.env}
    out = subprocess.run(case.argv, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  warn")]
    text = " ".join(lines)
    holds = (out.returncode == 1 and "Traceback" not in out.stderr and 1 <= len(lines) <= 2 and case.names in text
             and "s3cr3t" not in out.stderr + out.stdout)
    return {"case": case.name, "rc": out.returncode, "lines": len(lines), "traceback": "Traceback" in out.stderr,
            "holds": holds, "message": re.sub(r"\s+", " ", text)[:240]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hostile.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        rows = [run(c, Path(work)) for c in CASES]
    table = Table(title="hostile input: one line naming the culprit")
    for col in ("case", "rc", "lines", "holds", "message"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["case"], str(r["rc"]), str(r["lines"]), "yes" if r["holds"] else "[red]NO[/]", r["message"][:120])
    Console(width=200).print(table)
    write_json(args.out, {"cases": rows, "held": sum(r["holds"] for r in rows), "total": len(rows),
                          "covered_by_tests": COVERED, "definition": [asdict(c) | {"files": sorted(c.files)} for c in CASES]})
    print(f"{sum(r['holds'] for r in rows)} of {len(rows)} cases hold; {args.out}")
    return 0 if all(r["holds"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
