"""Prompts for the map generator: what a segmentation map holds, as text, and back.

A prompt lists the classes present, one clause each: name, size, location, quantity, e.g.
``"Liver, large, upper left, one region; Grasper, small, centre, two regions"``.

- size: the class's area share against *that class's* own distribution in the training maps
  (tertiles), so "small liver" and "small grasper" are both the smallest third of their kind;
- location: the 3x3 grid cell of the class's centroid (``LOCATIONS``);
- quantity: separate regions (8-connected, specks under ``min_fraction`` of the map ignored).

``describe_map`` builds a prompt from a map (training prompts, and checking generated maps);
``parse_prompt`` reads a hand-written one: the size, location and quantity are optional, and an
unknown word is an error that names it and the closest valid word.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np

SIZES = ("small", "medium", "large")
LOCATIONS = ("upper left", "upper centre", "upper right", "centre left", "centre", "centre right",
             "lower left", "lower centre", "lower right")
QUANTITIES = ("one region", "two regions", "several regions")
ALIASES = {"center": "centre", "top": "upper", "bottom": "lower", "middle": "centre", "one": "one region",
           "two": "two regions", "several": "several regions", "1 region": "one region", "2 regions": "two regions"}
FIELDS = {"size": SIZES, "location": LOCATIONS, "quantity": QUANTITIES}


class PromptError(ValueError):
    """A prompt could not be read; the message names the word and suggests the closest valid one."""


@dataclass(frozen=True)
class ClassPrompt:
    """One class's clause; ``None`` = not specified (free for the generator, not checked)."""

    name: str
    size: str | None = None
    location: str | None = None
    quantity: str | None = None

    def text(self) -> str:
        return ", ".join(v for v in (self.name, self.size, self.location, self.quantity) if v is not None)


Prompt = tuple[ClassPrompt, ...]


def format_prompt(prompt: Prompt) -> str:
    return "; ".join(c.text() for c in prompt)


@dataclass(frozen=True)
class Vocabulary:
    """Class names (in id order) and the per-class size thresholds fitted on the training maps."""

    names: tuple[str, ...]
    thresholds: tuple[tuple[float, float], ...]  # per class: small|medium and medium|large area shares
    min_fraction: float = 0.002  # regions (and classes) smaller than this share of the map are specks
    _lower: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self._lower.update({n.lower(): i for i, n in enumerate(self.names)})

    def class_id(self, name: str) -> int | None:
        return self._lower.get(name.lower())

    def to_dict(self) -> dict:
        return {"names": list(self.names), "thresholds": [list(t) for t in self.thresholds],
                "min_fraction": self.min_fraction}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(tuple(d["names"]), tuple(tuple(t) for t in d["thresholds"]), d["min_fraction"])


@dataclass(frozen=True)
class ClassStats:
    """What a map holds of one class: share of the map, separate regions, centroid (row, col in [0, 1))."""

    area: float
    regions: int
    centroid: tuple[float, float]


def class_stats(labels: np.ndarray, num_classes: int, min_fraction: float) -> dict[int, ClassStats]:
    """Per present class: area share, regions, centroid of its regions of at least ``min_fraction``
    of the pixels (8-connected). Specks are not regions: a class scattered as specks is absent, however
    many pixels they add up to (a generator's salt noise must not count as drawing a class), and they
    move neither the area nor the centroid."""
    from scipy import ndimage

    h, w = labels.shape
    min_px = max(1, round(min_fraction * h * w))
    out = {}
    counts = np.bincount(labels[labels < num_classes].ravel(), minlength=num_classes)
    for c in np.flatnonzero(counts >= min_px):
        comp, _ = ndimage.label(labels == c, structure=np.ones((3, 3)))
        sizes = np.bincount(comp.ravel())
        big = np.flatnonzero(sizes[1:] >= min_px) + 1
        if not len(big):
            continue
        ys, xs = np.nonzero(np.isin(comp, big))
        out[int(c)] = ClassStats(len(ys) / (h * w), len(big), (float(ys.mean() + 0.5) / h, float(xs.mean() + 0.5) / w))
    return out


def size_word(area: float, thresholds: tuple[float, float]) -> str:
    return SIZES[0] if area < thresholds[0] else SIZES[1] if area < thresholds[1] else SIZES[2]


def location_word(centroid: tuple[float, float]) -> str:
    row, col = (min(2, int(v * 3)) for v in centroid)
    return LOCATIONS[row * 3 + col]


def quantity_word(regions: int) -> str:
    return QUANTITIES[min(regions, 3) - 1]


def describe_map(labels: np.ndarray, vocab: Vocabulary) -> Prompt:
    """The prompt a map answers: its present classes in id order, each with size, location, quantity."""
    stats = class_stats(np.asarray(labels), len(vocab.names), vocab.min_fraction)
    return tuple(ClassPrompt(vocab.names[c], size_word(s.area, vocab.thresholds[c]), location_word(s.centroid),
                             quantity_word(s.regions)) for c, s in sorted(stats.items()))


def fit_vocabulary(maps, names: list[str], min_fraction: float = 0.002) -> Vocabulary:
    """Per-class size thresholds: the tertiles of the class's area share over the maps holding it.
    A class seen in fewer than 3 maps borrows the tertiles of all classes together."""
    areas: list[list[float]] = [[] for _ in names]
    for labels in maps:
        for c, s in class_stats(np.asarray(labels), len(names), min_fraction).items():
            areas[c].append(s.area)
    pooled = [a for per in areas for a in per]
    if len(pooled) < 3:
        raise ValueError(f"cannot fit size thresholds: only {len(pooled)} class regions in the training maps")
    tert = lambda v: tuple(float(q) for q in np.quantile(v, [1 / 3, 2 / 3]))
    return Vocabulary(tuple(names), tuple(tert(a) if len(a) >= 3 else tert(pooled) for a in areas), min_fraction)


def _closest(word: str, choices: list[str]) -> str:
    return difflib.get_close_matches(word[:SHOWN], choices, n=1, cutoff=0.0)[0]


SHOWN = 80  # characters of a bad prompt or word an error echoes: a 10,000-character prompt is not repeated


def _shown(text: str) -> str:
    """``text`` as an error quotes it: repr, cut to ``SHOWN`` characters with the full length said."""
    return repr(text) if len(text) <= SHOWN else f"{text[:SHOWN]!r}... ({len(text)} characters)"


def _normalise(word: str) -> str:
    word = re.sub(r"\s+", " ", word.strip().lower())
    for old, new in ALIASES.items():
        if word == old:
            return new
    return " ".join(ALIASES.get(w, w) if w in ("center", "top", "bottom", "middle") else w for w in word.split())


def parse_prompt(text: str, vocab: Vocabulary) -> Prompt:
    """Read ``"name[, size][, location][, quantity]; ..."`` (fields in any order, case-insensitive)."""
    clauses = [c for c in (part.strip() for part in text.split(";")) if c]
    if not clauses:
        raise PromptError(f"empty prompt {_shown(text)}; expected e.g. 'Liver, large, upper left; Grasper, small, centre'")
    seen, out = set(), []
    for clause in clauses:
        words = [w.strip() for w in clause.split(",")]
        if not words[0]:
            raise PromptError(f"prompt {_shown(text)}: a clause {_shown(clause)} starts with no class name; expected "
                              "'class[, size][, location][, quantity]', e.g. 'Liver, large, upper left'")
        cid = vocab.class_id(re.sub(r"\s+", " ", words[0]))
        if cid is None:
            raise PromptError(f"prompt {_shown(text)}: unknown class {_shown(words[0])}; did you mean "
                              f"{_closest(words[0], list(vocab.names))!r}? (classes: {', '.join(vocab.names)})")
        name = vocab.names[cid]
        if cid in seen:
            raise PromptError(f"prompt {_shown(text)}: class {name!r} named twice; give each class one clause")
        seen.add(cid)
        values: dict[str, str] = {}
        for raw in words[1:]:
            word = _normalise(raw)
            kind = next((k for k, vocab_words in FIELDS.items() if word in vocab_words), None)
            if kind is None:
                every = [w for ws in FIELDS.values() for w in ws]
                raise PromptError(f"prompt {_shown(text)}: unknown word {_shown(raw.strip())} for {name}; did you mean "
                                  f"{_closest(word, every)!r}? (sizes: {', '.join(SIZES)}; locations: "
                                  f"{', '.join(LOCATIONS)}; quantities: {', '.join(QUANTITIES)})")
            if kind in values:
                raise PromptError(f"prompt {_shown(text)}: {name} has two {kind}s ({values[kind]!r}, {word!r})")
            values[kind] = word
        out.append(ClassPrompt(name, **values))
    return tuple(sorted(out, key=lambda c: vocab.class_id(c.name)))


def clause_area(clause: ClassPrompt, vocab: Vocabulary) -> float:
    """The area share a clause asks for: the middle of its size bucket (its class's own tertiles);
    unspecified = medium. A small clause never asks for less than twice the speck threshold."""
    lo, hi = vocab.thresholds[vocab.class_id(clause.name)]
    size = clause.size or "medium"
    if size == "small":
        return max(2 * vocab.min_fraction, lo / 2)
    return (lo + hi) / 2 if size == "medium" else min(0.9, (hi + 1) / 2 if hi > 0.5 else 1.5 * hi)


def render_layout(prompt: Prompt, vocab: Vocabulary, size: int) -> np.ndarray:
    """[K, size, size] in [-1, 1]: the prompt drawn where a convolution can read it. Each clause is a
    soft disc in its class's channel, at the centre of its location's 3x3 cell (unspecified: the map's
    centre, twice as wide), as large as ``clause_area`` asks; discs are painted largest first, so a
    small clause stays on top of a large one at the same place (a cystic duct "small, centre" inside a
    liver "large, centre"), as small structures lie on larger ones in these scenes. A class the prompt
    does not name is -1 everywhere: training prompts name every class a map holds, so an unnamed class
    is an absent one. The empty prompt (the null of guidance) is all 0: nothing said.

    Why: a pixel-aligned hint of which class goes where and how big is learned in a few hundred CPU
    steps; cross-attention to the clause tokens alone was not (casdm/mapgen.py). The quantity is not
    drawn (one disc per class)."""
    k = len(vocab.names)
    if not prompt:
        return np.zeros((k, size, size), dtype=np.float32)
    out = -np.ones((k, size, size), dtype=np.float32)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    owner = np.full((size, size), -1)
    discs = []
    for c in prompt:
        radius = np.sqrt(clause_area(c, vocab) / np.pi)
        if c.location is None:
            row, col, radius = 0.5, 0.5, 2 * radius
        else:
            i = LOCATIONS.index(c.location)
            row, col = (i // 3 + 0.5) / 3, (i % 3 + 0.5) / 3
        edge = max(1.5 / size, radius / 4)  # soft rim: the disc says "about here", not a shape
        dist = np.sqrt((yy - row) ** 2 + (xx - col) ** 2)
        discs.append((radius, vocab.class_id(c.name), np.clip((radius + edge - dist) / (2 * edge), 0, 1)))
    for radius, cid, disc in sorted(discs, key=lambda d: -d[0]):  # largest first, the smallest on top
        owner[disc > 0] = cid
    for radius, cid, disc in discs:
        out[cid] = np.where(owner == cid, disc, 0)
    return out


def field_ids(prompt: Prompt, vocab: Vocabulary) -> list[tuple[int, int, int, int]]:
    """Per clause (class id + 1, size, location, quantity), each 0 when unspecified: the structured
    fields the ``learned`` text encoder embeds (0 in the class slot is padding)."""
    idx = lambda choices, v: 0 if v is None else choices.index(v) + 1
    return [(vocab.class_id(c.name) + 1, idx(SIZES, c.size), idx(LOCATIONS, c.location), idx(QUANTITIES, c.quantity))
            for c in prompt]
