"""Training checkpoints: published whole or not at all, checked before they are trusted.

Each checkpoint is ``step-N/`` (accelerate's state: model, optimizer, scheduler, RNG, the EMA; the
kind's extra state; ``state.json`` with the step, the parameters' hash, each file's size and SHA-256,
the MLflow run and the loss history), written to a temp folder and renamed into place; ``latest``
names the newest. Why not accelerate's ``ProjectConfiguration(automatic_checkpoint_naming=True,
total_limit=...)``: it writes ``checkpoint_N`` in place and deletes the oldest before the new one is
complete, so a kill during a save could leave one good checkpoint or none, where here the previous
ones stay until the new one is whole.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from benchmark.io import atomic_dir, write_json, write_text

KEEP = 2  # checkpoints kept: the newest and the one before it (the fallback when the newest is corrupt)


def latest(folder: Path) -> Path | None:
    """The checkpoint ``latest`` names, if it is complete."""
    marker = folder / "latest"
    if not marker.exists():
        return None
    path = folder / marker.read_text().strip()
    return path if (path / "state.json").exists() else None


def manifest(folder: Path) -> dict:
    """Size and SHA-256 of every file of a checkpoint: checked before resuming, so a truncated or
    corrupt file is found by name instead of failing somewhere inside ``load_state``."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "state.json"):
        with f.open("rb") as fh:
            out[str(f.relative_to(folder))] = [f.stat().st_size, hashlib.file_digest(fh, "sha256").hexdigest()]
    return out


def verify(folder: Path, state: dict) -> None:
    for rel, (size, digest) in state.get("files", {}).items():
        f = folder / rel
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing")
        if f.stat().st_size != size:
            raise ValueError(f"{f}: {f.stat().st_size} bytes, {size} when saved (truncated)")
        with f.open("rb") as fh:
            if hashlib.file_digest(fh, "sha256").hexdigest() != digest:
                raise ValueError(f"{f}: content differs from when it was saved (corrupt)")


def candidates(folder: Path) -> list[Path]:
    """Checkpoints to resume from, newest first: the one ``latest`` names, then every other
    ``step-N`` (a corrupt newest one is skipped for the one before it)."""
    steps = sorted((p for p in folder.glob("step-*") if p.name[5:].isdigit()), key=lambda p: -int(p.name[5:]))
    first = latest(folder)
    return ([first] if first else []) + [p for p in steps if p != first]


def resume(accelerator, kind, model, folder: Path, config_hash: str, console) -> dict | None:
    """Load the newest readable checkpoint made with these parameters; returns its state.json, or None
    (start afresh). A truncated or corrupt checkpoint is skipped with a warning naming the file."""
    stale, broken = False, []
    for path in candidates(folder):
        try:
            state = json.loads((path / "state.json").read_text())
            if state["config_hash"] != config_hash:
                stale = True
                continue
            verify(path, state)
        except (OSError, ValueError, KeyError) as exc:  # checked before loading: nothing was touched yet
            console.print(f"[yellow]warning: skipping checkpoint {path}: {exc}; trying the one before it[/]")
            continue
        try:
            accelerator.load_state(str(path))
            kind.load_state(path, accelerator.unwrap_model(model))
            return {**state, "path": path}
        except Exception as exc:  # noqa: BLE001 - unreadable despite its manifest (or saved without one)
            console.print(f"[yellow]warning: checkpoint {path} could not be loaded ({type(exc).__name__}: {exc})[/]")
            broken.append(str(path))
    if broken:  # a failed load may have written part of the weights: a fresh start must not begin from them
        raise RuntimeError(f"no readable checkpoint in {folder} (unreadable: {', '.join(broken)}); delete the "
                           "folder to train from scratch")
    if stale:
        console.print(f"[yellow]checkpoints in {folder} were made with other parameters; starting afresh[/]")
        shutil.rmtree(folder)
        folder.mkdir(parents=True)
    return None


def save(accelerator, kind, folder: Path, step: int, state: dict) -> None:
    """Publish checkpoint ``step-<step>`` (``state`` goes into its state.json with the file manifest),
    point ``latest`` at it and drop all but the newest ``KEEP``."""
    final = folder / f"step-{step}"
    with atomic_dir(final) as tmp:
        accelerator.save_state(str(tmp))
        kind.save_state(tmp)
        write_json(tmp / "state.json", {"step": step, **state, "files": manifest(tmp)})
    write_text(folder / "latest", final.name)
    old = sorted((p for p in folder.glob("step-*")), key=lambda p: int(p.name[5:]))
    for p in old[:-KEEP]:
        shutil.rmtree(p, ignore_errors=True)
