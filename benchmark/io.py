"""File helpers shared by every stage: every file a stage writes goes through a temp file and a rename,
so a killed stage never leaves half a file (or folder) that looks finished."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable


def time_left(done: int, total: int, elapsed_s: float) -> str:
    """``", ~N s left"`` for a progress line (the pace so far, carried to the end); empty when done or
    when nothing is done yet to pace by. Stages print plain lines, not a live bar: DVC prints their output."""
    if done <= 0 or done >= total:
        return ""
    return f", ~{elapsed_s / done * (total - done):.0f} s left"


def failpoint(name: str) -> None:
    """Fault-test hook: with ``CASDM_KILL_AT=<name>`` the process kills itself here with SIGKILL, as
    ``kill -9`` would, at a point a timer could not hit reliably (tests/test_pipeline.py)."""
    if os.environ.get("CASDM_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _name(exc: BaseException, path: Path) -> None:
    """A failed write() names no file: an OSError without one is given the output it was writing."""
    if isinstance(exc, OSError) and not exc.filename:
        exc.filename = str(path)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` through ``.<name>.tmp`` beside ``path``, then rename it into place; a failed
    write (a full disk) removes the temp file and leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _name(exc, path)
        raise
    failpoint(f"publish:{path.name}")
    tmp.replace(path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_utf8(path: Path, expected: str) -> str:
    """The text of ``path``, a byte-order mark dropped (some editors write one); a file in another
    encoding fails naming it, the byte and what it should hold, not with a bare decode error."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); expected {expected}") from None


def read_json(path: Path, expected: str):
    """The JSON in ``path``; a truncated or hand-broken file fails naming it, where it broke and what it
    should hold (``expected``), not with json's bare "Expecting ',' delimiter"."""
    try:
        return json.loads(read_utf8(path, expected))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); expected "
                         f"{expected}") from None


def write_csv(path: Path, columns: list[str], rows: Iterable[dict]) -> None:
    """A CSV with a header row; ``rows`` are dicts keyed by ``columns`` (missing keys are empty)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, columns)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(out: Path):
    """Yield a fresh temp folder beside ``out``; when the block succeeds it replaces ``out``, when it
    fails it is removed, so a stage never leaves a half-written output that looks finished. A process
    killed outright (``kill -9``) cannot remove its temp folder: the next writer of ``out`` removes
    every stale ``.<out>.tmp-*`` first (one writer per output: DVC runs a stage once at a time).

    Publishing is two renames (``out`` aside, the temp folder in), so a failure there leaves the old
    ``out`` in place rather than half deleted. An ``OSError`` (a full disk, a read-only folder) is
    raised naming ``out`` when the system call named no file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private (0700); an output folder is the umask's
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _name(exc, out)
        raise
    failpoint(f"publish:{out.name}")
    old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
    try:
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except OSError as exc:
        if old.exists() and not out.exists():
            old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        _name(exc, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:  # a file stood where the folder goes: rmtree cannot remove it and left .NAME.old-* behind
        old.unlink(missing_ok=True)


def foreign_files(folder: Path, own: Iterable[str]) -> list[str]:
    """Names in ``folder`` that match none of the glob patterns ``own`` (what a command writes there):
    a command replaces a folder whole only when all it holds is its own earlier output."""
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir() or folder.is_symlink():
        return [folder.name]
    return sorted(p.name for p in folder.iterdir() if not any(p.match(pattern) for pattern in own))
