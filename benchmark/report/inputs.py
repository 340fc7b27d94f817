"""What a report reads, from one state of the suite: the leaderboard and its comparisons (required),
then every other piece when it exists (rows, training and sampling metrics, loss curves, samples,
the last training grids, the prepared data's statistics, the map generator's outputs, a study).

Paths come from the stage's command line (dvc.yaml), never from defaults here.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from benchmark.config import Params
from benchmark.metrics.pooling import pool
from benchmark.results import Comparison, EvaluationRow, LeaderboardRow
from benchmark.seeds import seed_path


@dataclass
class ReportPaths:
    leaderboard: Path  # metrics/leaderboard.json
    comparisons: Path  # metrics/comparisons.json
    rows: Path  # metrics/evaluate/
    train_metrics: Path  # metrics/train/
    sample_metrics: Path  # metrics/sample/
    train_plots: Path  # plots/train/
    samples: Path  # samples/ (one folder per model, and maps/)
    models: Path  # models/ (each model's last_grid.png)
    data: Path  # data/prepared
    maps: Path  # metrics/maps.json
    studies: Path  # studies/ (the default study storage's folder)
    lock: Path  # dvc.lock
    params: Path  # params.yaml


def read_json(path: Path, what: str) -> dict | list:
    """A JSON input; a missing or broken file is an error naming it and the stage that writes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing ({what}); run `dvc repro` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); expected {what}") from None


def _folder_json(folder: Path) -> dict[str, dict]:
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _row(path: Path) -> EvaluationRow:
    try:
        return EvaluationRow.model_validate(json.loads(path.read_text()))
    except ValidationError as exc:
        raise ValueError(f"{path}: not an evaluation row ({exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}); "
                         "run `dvc repro` again") from None


def file_hash(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else None


@dataclass
class Inputs:
    """One state's report inputs; ``missing`` says, per optional piece, why it is absent."""

    params: Params
    paths: ReportPaths
    leaderboard: dict[str, LeaderboardRow]
    comparisons: list[Comparison]
    rows: dict[str, EvaluationRow] = field(default_factory=dict)
    train: dict[str, dict] = field(default_factory=dict)
    sample: dict[str, dict] = field(default_factory=dict)
    data_stats: dict | None = None
    maps: dict | None = None
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """params.yaml's models that have a leaderboard row, in params order."""
        return [m for m in self.params.models if m in self.leaderboard]

    @property
    def first_seed(self) -> int:
        """The training seed whose samples, loss curves and grids the report shows (the first of train.seeds)."""
        return self.params.train.seeds[0]

    def of_seed(self, root: Path, name: str, suffix: str = "") -> Path:
        """``root/<model>/seed<N><suffix>`` of the first training seed."""
        return seed_path(root, name, self.first_seed, suffix)

    def samples_of(self, name: str) -> Path | None:
        folder = self.of_seed(self.paths.samples, name)
        return folder if (folder / "manifest.json").exists() else None


def load(params: Params, paths: ReportPaths) -> Inputs:
    board = read_json(paths.leaderboard, "the leaderboard stage's metrics")
    found = read_json(paths.comparisons, "the leaderboard stage's comparisons")
    if not isinstance(board, dict) or not board:
        raise ValueError(f"{paths.leaderboard}: expected one object per leaderboard row, found {type(board).__name__}")
    try:
        found = [Comparison.model_validate(c) for c in found]
    except (ValidationError, TypeError) as exc:
        raise ValueError(f"{paths.comparisons}: not the leaderboard stage's comparisons ({exc}); run `dvc repro "
                         "leaderboard`") from None
    try:
        board = {name: LeaderboardRow.from_flat(name, r) for name, r in board.items()}
    except (ValidationError, AttributeError) as exc:
        raise ValueError(f"{paths.leaderboard}: not the leaderboard stage's rows ({exc}); run `dvc repro "
                         "leaderboard`") from None
    level = params.evaluate.bootstrap.level
    rows = {name: _row(paths.rows / f"{name}.json") for name in _folder_json(paths.rows)}  # real, control, maps
    for name in params.models:  # each model's seeds, pooled as the leaderboard pools them
        seeds = [seed_path(paths.rows, name, s, ".json") for s in params.train.seeds]
        if all(f.exists() for f in seeds):
            rows[name] = pool([_row(f) for f in seeds], level)
    first = params.train.seeds[0]
    per_model = lambda folder: {**_folder_json(folder), **{  # the first seed's metrics of each model
        n: json.loads(f.read_text()) for n in params.models if (f := seed_path(folder, n, first, ".json")).exists()}}
    inp = Inputs(params=params, paths=paths, leaderboard=board, comparisons=found,
                 rows=rows, train=per_model(paths.train_metrics), sample=per_model(paths.sample_metrics))
    stats = paths.data / "stats.json"
    if stats.exists():
        inp.data_stats = json.loads(stats.read_text())
    else:
        inp.missing["data"] = f"{stats} not found (the prepare stage's output)"
    if paths.maps.exists():
        inp.maps = json.loads(paths.maps.read_text())
    else:
        inp.missing["maps"] = f"{paths.maps} not found (the maps stage did not run)"
    return inp
