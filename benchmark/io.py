"""Small file helpers shared by every stage."""
from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def write_json(path: Path, data) -> None:
    """Write through a temp file and rename, so a killed stage never leaves half a JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


@contextmanager
def atomic_dir(out: Path):
    """Yield a fresh temp folder beside ``out``; when the block succeeds it replaces ``out``, when it
    fails it is removed, so a stage never leaves a half-written output that looks finished."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def copy_project(src: Path, dst: Path) -> Path:
    """Copy the project's files as a fresh clone would have them (tracked and untracked-not-ignored;
    no generated data, metrics or dvc.lock) into ``dst`` and make it a git repository."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=src,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (src / f).is_file() and not f.startswith(("data/", "metrics/", "plots/")) and f != "dvc.lock":
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, dst / f)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst
