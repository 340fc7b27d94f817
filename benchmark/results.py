"""Typed results: what an evaluation stage measured of one row (``EvaluationRow`` and its parts), a
difference between two rows with its interval and verdict, a comparison (a difference with what was
compared and why), a map generator's scores, and the leaderboard's rows of ``Estimate`` cells. The
stages build and read these models; JSON and CSV are what they become when written (``to_json``,
``LeaderboardRow.flat``), in the same keys and order the files always had."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

REAL, CONTROL = "real", "real+control"  # the two reference rows every model's row is compared with


class Difference(BaseModel):
    """A - B, its interval (None: too few seeds or resamples to have one) and the word it supports."""

    model_config = ConfigDict(extra="forbid")
    delta: float
    low: float | None
    high: float | None
    n: int  # seeds paired, or bootstrap resamples
    method: str  # the interval and the test: paired t over seeds | paired bootstrap over test clips
    p: float | None = None  # two-sided, unadjusted; None: no test (one seed)
    mde: float | None = None  # minimum detectable effect: the |A - B| this test sees with 80 % power
    seed_sd: float | None = None  # sd over training seeds of the per-seed differences (>= 2 seeds), else None
    verdict: str  # better | worse | indistinguishable (metrics/stats.py), from the test as adjusted


class Comparison(BaseModel):
    """One line of metrics/comparisons.json: row ``a`` against row ``b`` on ``metric``, tested within
    its ``family`` (its p Holm-adjusted against the family's other tests; the verdict read from that)."""

    model_config = ConfigDict(extra="forbid")
    a: str
    b: str
    metric: str
    delta: float
    low: float | None
    high: float | None
    n: int
    method: str
    p: float | None = None
    mde: float | None = None
    verdict: str
    kind: str  # control vs real | vs real | vs real+control | method vs ablation | method vs baseline | ladder step
    family: str = ""  # the family its p is adjusted in (Holm): the kind, e.g. "method vs baseline"
    p_adjusted: float | None = None
    scope: str = "weights"  # weights: one training seed (a difference between these weights) | method: >= 3 seeds | data: no trained model
    seed_sd: float | None = None  # the sd over training seeds of the per-seed difference A - B (none: not measured)
    seed_sd_from: str | None = None  # where seed_sd was measured: "this run" (>= 2 seeds) or the multi-seed run's file
    note: str | None = None  # e.g. "selection effect: ..."; absent from the file when there is none

    @classmethod
    def of(cls, a: str, b: str, metric: str, kind: str, d: Difference) -> "Comparison":
        return cls(a=a, b=b, metric=metric, kind=kind, family=kind, **d.model_dump())

    @property
    def step(self) -> str:
        """``B -> A``: how the ablation ladder names a step."""
        return f"{self.b} -> {self.a}"

    def to_json(self) -> dict:
        return self.model_dump(exclude={"note"} if self.note is None else set())


class MapScores(BaseModel):
    """The map generator's (or the retrieval baseline's) headline scores: the leaderboard's ``maps_*`` columns."""

    model_config = ConfigDict(extra="forbid")
    adherence: float | None
    rare_presence: float | None
    cooccurrence_l1: float | None
    area_w1: float | None
    diversity: float | None

    @classmethod
    def of(cls, summary: dict) -> "MapScores":
        """From one side (``generator`` or ``baseline``) of the maps stage's metrics.json."""
        return cls(adherence=summary["adherence"]["adherence"], rare_presence=summary["adherence"]["rare_presence"],
                   cooccurrence_l1=summary["realism"]["cooccurrence_l1"], area_w1=summary["realism"]["area_w1"],
                   diversity=summary["diversity"])


class Estimate(BaseModel):
    """One leaderboard cell: a value with what the run knows of its uncertainty (a spread over seeds, an
    interval) and, for a comparison, its verdict. The leaderboard file flattens it as ``<column>``,
    ``<column>_std``, ``<column>_low``, ``<column>_high``, ``<column>_verdict`` (``Column.flat_names``)."""

    model_config = ConfigDict(extra="forbid")
    value: float | int | str | None = None
    std: float | None = None
    low: float | None = None
    high: float | None = None
    verdict: str | None = None


PARTS = ("std", "low", "high", "verdict")  # the order a column's parts have in the flat file


class Column(BaseModel):
    """A leaderboard column and which of an ``Estimate``'s parts the flat file carries for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    parts: tuple[str, ...] = ()

    def flat_names(self) -> list[str]:
        return [self.name, *(f"{self.name}_{p}" for p in self.parts)]


class LeaderboardRow(BaseModel):
    """One model's leaderboard row: its role and one ``Estimate`` per column."""

    model_config = ConfigDict(extra="forbid")
    model: str
    role: str = ""
    cells: dict[str, Estimate]

    def value(self, column: str):
        cell = self.cells.get(column)
        return None if cell is None else cell.value

    def flat(self, columns: list[Column]) -> dict:
        """The row as metrics/leaderboard.json and plots/leaderboard/summary.csv hold it."""
        out = {"model": self.model, "role": self.role}
        for c in columns:
            cell = self.cells.get(c.name, Estimate())
            out[c.name] = cell.value
            out.update({f"{c.name}_{p}": getattr(cell, p) for p in c.parts})
        return out

    @classmethod
    def from_flat(cls, model: str, flat: dict) -> "LeaderboardRow":
        """Read back a row that ``flat`` wrote (metrics/leaderboard.json, MLflow's leaderboard table)."""
        cells: dict[str, Estimate] = {}
        for c in columns_of(flat):
            parts = {p: flat.get(f"{c.name}_{p}") for p in c.parts}
            cells[c.name] = Estimate(value=flat.get(c.name), **parts)
        return cls(model=model, role=flat.get("role") or "", cells=cells)


def columns_of(flat: dict) -> list[Column]:
    """The columns of a flat leaderboard row, each with the parts it carries (the one place that reads
    the ``_std``/``_low``/``_high``/``_verdict`` suffixes back)."""
    keys = [k for k in flat if k not in ("model", "role", "run_id")]
    present = set(keys)
    part_of = {f"{k}_{p}" for k in keys for p in PARTS if f"{k}_{p}" in present}
    return [Column(name=k, parts=tuple(p for p in PARTS if f"{k}_{p}" in present))
            for k in keys if k not in part_of]


class Bootstrapped(BaseModel):
    """A block of scores each stored beside its bootstrap interval (``<metric>_low``, ``<metric>_high``)."""

    def estimate(self, metric: str) -> Estimate:
        """The score with its bias-corrected bootstrap interval (none for a row scored without one)."""
        return Estimate(value=getattr(self, metric), low=getattr(self, f"{metric}_low"),
                        high=getattr(self, f"{metric}_high"))


class Quality(Bootstrapped):
    """Image quality of one row's test-map images: FID/KID with their bootstrap over the test maps, PRDC,
    and (for a model) the colour cast against the real images of the same maps."""

    model_config = ConfigDict(extra="forbid")
    fid: float
    kid: float
    extractor: str
    images_generated: int | None = None
    images_real: int | None = None
    prdc: dict[str, float] = {}
    bootstrap: dict[str, list[float]] = {}
    fid_low: float | None = None
    fid_high: float | None = None
    kid_low: float | None = None
    kid_high: float | None = None
    colour: dict | None = None


class Semantic(Bootstrapped):
    """The semantic-fidelity judge's scores on one row's images (per class, and mIoU bootstrapped)."""

    model_config = ConfigDict(extra="forbid")
    miou: float | None = None
    mdice: float | None = None
    rare_miou: float | None = None
    rare_mdice: float | None = None
    iou: dict[str, float | None] = {}
    dice: dict[str, float | None] = {}
    absent: list[str] = []
    bootstrap: dict[str, list[float | None]] = {}
    miou_low: float | None = None
    miou_high: float | None = None
    rare_miou_low: float | None = None
    rare_miou_high: float | None = None


class Downstream(BaseModel):
    """Segmenters trained on one row's training set, scored on the real test split: per run, per seed
    (averaged over segmenters) and mean ± sample std over seeds."""

    model_config = ConfigDict(extra="forbid")
    segmenters: list[str] = []
    seeds: list[int] = []
    per_seed: list[dict] = []
    miou: float | None = None
    miou_std: float | None = None
    mdice: float | None = None
    mdice_std: float | None = None
    rare_miou: float | None = None
    rare_miou_std: float | None = None
    rare_mdice: float | None = None
    rare_mdice_std: float | None = None
    per_class: dict[str, dict[str, float | None]] = {}
    absent: list[str] = []
    runs: list[dict] = []
    segmenter_labels: dict[str, str] = {}

    def estimate(self, metric: str) -> Estimate:
        """A scalar (``miou``, ``mdice``, ``rare_miou``, ``rare_mdice``): mean ± std over seeds."""
        return Estimate(value=getattr(self, metric), std=getattr(self, f"{metric}_std"))

    def by_seed(self, metric: str) -> dict[int, float | None]:
        return {p["seed"]: p[metric] for p in self.per_seed}


class EvaluationRow(BaseModel):
    """One metrics/evaluate/<row>.json: what the evaluation stages measured of one training set (real
    only, the control, a model's synthetic pairs, the generated maps' pairs). Fields are written in this
    order and only when the stage set them (``to_json``)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    role: str = ""
    rare_classes: list[str] = []
    train_images: dict[str, int] = {}
    quality: Quality | None = None
    semantic: Semantic | None = None
    judge: str | None = None
    maps: dict[str, MapScores] | None = None  # the map generator's and the retrieval baseline's scores
    text_encoder: str | None = None
    downstream: Downstream
    training_seeds: list[int] | None = None  # the training seeds its images come from (none: real images)
    seconds: float | None = None
    training: dict | None = None  # the leaderboard adds train@<model>-<seed>'s budget (metrics/train/<model>/seed<N>.json)
    replicates: list["EvaluationRow"] = []  # a row pooled over training seeds (metrics/pooling.py): the seeds' rows

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True, exclude={"replicates"})
