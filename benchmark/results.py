"""Typed results: a difference between two rows with its interval and verdict, a comparison (a
difference with what was compared and why), and a map generator's scores. The stages build and read these models; JSON and CSV are
what they become when written (``to_json``), in the same keys and order the files always had."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Difference(BaseModel):
    """A - B, its interval (None: too few seeds or resamples to have one) and the word it supports."""

    model_config = ConfigDict(extra="forbid")
    delta: float
    low: float | None
    high: float | None
    n: int  # seeds paired, or bootstrap resamples
    method: str  # how the interval was made
    verdict: str  # better | worse | indistinguishable (metrics/stats.py)


class Comparison(BaseModel):
    """One line of metrics/comparisons.json: row ``a`` against row ``b`` on ``metric``."""

    model_config = ConfigDict(extra="forbid")
    a: str
    b: str
    metric: str
    delta: float
    low: float | None
    high: float | None
    n: int
    method: str
    verdict: str
    kind: str  # vs real | vs real+control | method vs ablation | method vs baseline | ladder step
    note: str | None = None  # e.g. "selection effect: ..."; absent from the file when there is none

    @classmethod
    def of(cls, a: str, b: str, metric: str, kind: str, d: Difference) -> "Comparison":
        return cls(a=a, b=b, metric=metric, kind=kind, **d.model_dump())

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
