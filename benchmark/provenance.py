"""Where a result came from: the git commit (and whether the tree differed from it), hashes of
parameters and of the prepared dataset, and a scratch copy of the project that records the commit it
was copied from. MLflow tags, the report's protocol card and the benchmark scripts all use these."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

# What a running pipeline itself rewrites (dvc.lock, metrics, plots, the report): a change there is the
# run's own output, not a change to what produced it, so it does not make the commit "dirty".
PIPELINE_OUTPUTS = ("dvc.lock", "metrics", "plots", "reports")


SECRET_IN_URL = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)[^@\s/]+@")
TOKEN_IN_URL = re.compile(r"(?P<head>\bhttps?://)[^/:@\s]+@")  # https://<token>@host: a git or DVC HTTP remote


def redact(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host`` and ``https://token@host`` ->
    ``https://***@host``: a storage, tracking or remote URL with a secret is never logged, rendered or put
    into an error message as written. A user name alone (``ssh://git@host``, ``postgresql://casdm@db``)
    is no secret and stays readable."""
    text = SECRET_IN_URL.sub(lambda m: m.group("head") + "***@", text)
    return TOKEN_IN_URL.sub(lambda m: m.group("head") + "***@", text)


def redact_tree(obj):
    """``redact`` on every string of a JSON-like tree (the params logged to MLflow, a params diff)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    return obj


def git_commit(cwd: Path | None = None) -> str:
    """HEAD of the repository at ``cwd`` (default: the working directory), with ``-dirty`` when a tracked
    file other than the pipeline's own outputs differs from it."""
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=cwd, capture_output=True, text=True, timeout=5)
        out = git("rev-parse", "HEAD")
        if out.returncode != 0:
            return "unknown"
        excluded = [f":(top,exclude){p}" for p in PIPELINE_OUTPUTS]
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hash_json(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_hash(prepared: Path) -> str:
    """Hash of the prepared dataset's index and statistics (changes whenever its content does)."""
    h = hashlib.sha256()
    for name in ("frames.csv", "stats.json", "classes.json"):
        h.update((Path(prepared) / name).read_bytes())
    return h.hexdigest()[:16]


def copy_project(src: Path, dst: Path) -> Path:
    """Copy the project's files as a fresh clone would have them (tracked and untracked-not-ignored;
    no generated data, metrics or dvc.lock) into ``dst``, a git repository with the copy as its one
    commit. The commit is what a run there records as its provenance (MLflow tags, the report), and
    its message names the source commit it was copied from (``git log -1`` in the copy): without it,
    every run of bench.pipeline / bench.screens.budget recorded the commit as "unknown"."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=src,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (src / f).is_file() and not f.startswith(("data/", "metrics/", "plots/")) and f != "dvc.lock":
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, dst / f)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=casdm-bench", "-c", "user.email=casdm-bench@localhost",
                                     "-c", "commit.gpgsign=false", *a], cwd=dst, check=True, capture_output=True)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "--no-verify", "-m", f"copy of {git_commit(src)} from {src}")
    return dst
