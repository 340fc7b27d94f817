"""The class table: one place that knows class ids, names, watershed codes, colours and rarity.

Every other module (readers, losses, metrics, prompts, reports) asks a ``ClassTable`` instead of
hard-coding CholecSeg8K's numbers, so a folder dataset with its own classes works the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from casdm.labels import IGNORE_INDEX  # noqa: F401  (re-exported: the harness's readers write it)


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    colour: tuple[int, int, int]
    watershed: int | None = None
    rare: bool = False


@dataclass(frozen=True)
class ClassTable:
    classes: tuple[ClassInfo, ...]
    ignore_watershed: tuple[int, ...] = ()
    """Codes in the raw masks that mean "no label" (CholecSeg8K: 0 unannotated, 255 border)."""
    stray_watershed: tuple[int, ...] = ()
    """Documented stray codes: mapped to ignore and reported per file."""
    _lut: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def rare_ids(self) -> list[int]:
        return [c.id for c in self.classes if c.rare]

    @property
    def rare_names(self) -> list[str]:
        return [c.name for c in self.classes if c.rare]

    def palette(self) -> np.ndarray:
        """[256, 3] uint8 lookup (index with a label map); ignore and unused ids are white."""
        pal = np.full((256, 3), 255, dtype=np.uint8)
        for c in self.classes:
            pal[c.id] = c.colour
        return pal

    def colourise(self, labels: np.ndarray) -> np.ndarray:
        return self.palette()[labels]

    def index(self, name: str) -> int:
        for c in self.classes:
            if c.name.lower() == name.lower():
                return c.id
        raise KeyError(f"unknown class {name!r}; expected one of {self.names}")

    def watershed_lut(self) -> np.ndarray:
        """256-entry lookup: watershed code -> class id, IGNORE_INDEX, or -1 for "invalid value"."""
        lut = np.full(256, -1, dtype=np.int16)
        for c in self.classes:
            if c.watershed is not None:
                lut[c.watershed] = c.id
        for v in (*self.ignore_watershed, *self.stray_watershed):
            lut[v] = IGNORE_INDEX
        return lut

    def to_dict(self) -> dict:
        return {
            "ignore_index": IGNORE_INDEX,
            "classes": [
                {"id": c.id, "name": c.name, "colour": list(c.colour), "rare": c.rare,
                 **({"watershed": c.watershed} if c.watershed is not None else {})}
                for c in self.classes
            ],
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "class table") -> "ClassTable":
        """Build a table from ``{"classes": [{name, colour?, rare?}, ...]}`` (classes.yaml form)."""
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
            raise ValueError(f"{source}: expected a mapping with a non-empty list 'classes'")
        items = []
        for i, entry in enumerate(data["classes"]):
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ValueError(f"{source}: classes[{i}] must be a name or a mapping with 'name'")
            unknown = set(entry) - {"id", "name", "colour", "color", "rare", "watershed"}
            if unknown:
                raise ValueError(f"{source}: classes[{i}] has unknown keys {sorted(unknown)}; "
                                 "expected name, colour, rare")
            if "id" in entry and entry["id"] != i:
                raise ValueError(f"{source}: classes[{i}] has id {entry['id']}, expected {i} (ids are list positions)")
            colour = entry.get("colour", entry.get("color"))
            if colour is None:
                colour = _default_colour(i)
            if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                    or not all(isinstance(v, int) and 0 <= v <= 255 for v in colour)):
                raise ValueError(f"{source}: classes[{i}].colour must be three integers 0-255, got {colour!r}")
            rare = entry.get("rare", False)
            if not isinstance(rare, bool):
                raise ValueError(f"{source}: classes[{i}].rare must be true or false, got {rare!r}")
            items.append(ClassInfo(i, entry["name"], tuple(colour), entry.get("watershed"), rare))
        if len(items) >= IGNORE_INDEX:
            raise ValueError(f"{source}: at most {IGNORE_INDEX - 1} classes are supported")
        names = [c.name.lower() for c in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{source}: duplicate class names {dupes}")
        return cls(tuple(items))

    @classmethod
    def from_yaml(cls, path: Path) -> "ClassTable":
        try:
            data = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: missing class list (classes.yaml)") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source=str(path))


def _default_colour(i: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(1000 + i)
    return tuple(int(v) for v in rng.integers(30, 256, size=3))


# CholecSeg8K (Hong et al. 2020). Watershed codes are decimal grey levels (Kaggle's "#505050" means 50).
# Colours are the corrected palette of the CASDM release (cholecSegClasses.json).
# Rare = present in under 10 % of the 8,080 frames.
CHOLECSEG8K = ClassTable(
    classes=(
        ClassInfo(0, "Black Background", (127, 127, 127), 50),
        ClassInfo(1, "Abdominal Wall", (210, 140, 140), 11),
        ClassInfo(2, "Liver", (255, 114, 114), 21),
        ClassInfo(3, "Gastrointestinal Tract", (231, 70, 156), 13),
        ClassInfo(4, "Fat", (186, 183, 75), 12),
        ClassInfo(5, "Grasper", (170, 255, 0), 31),
        ClassInfo(6, "Connective Tissue", (255, 85, 0), 23),
        ClassInfo(7, "Blood", (255, 0, 0), 24, rare=True),
        ClassInfo(8, "Cystic Duct", (255, 255, 0), 25, rare=True),
        ClassInfo(9, "L-hook Electrocautery", (169, 255, 184), 32),
        ClassInfo(10, "Gallbladder", (255, 160, 165), 22),
        ClassInfo(11, "Hepatic Vein", (0, 50, 128), 33, rare=True),
        ClassInfo(12, "Liver Ligament", (111, 74, 0), 5, rare=True),
    ),
    ignore_watershed=(0, 255),
    stray_watershed=(35, 36),
)

# Frame share (% of 8,080 frames holding the class) and mean area % where present, from the dataset's
# published statistics (shared/research/paper.md section 6.1); used to compare the synthetic set.
CHOLECSEG8K_FRAME_SHARE = {
    "Black Background": 99.7, "Abdominal Wall": 89.8, "Liver": 100.0, "Gastrointestinal Tract": 56.4,
    "Fat": 92.9, "Grasper": 74.5, "Connective Tissue": 19.8, "Blood": 8.6, "Cystic Duct": 3.1,
    "L-hook Electrocautery": 27.9, "Gallbladder": 84.9, "Hepatic Vein": 3.9, "Liver Ligament": 3.0,
}
CHOLECSEG8K_AREA_WHERE_PRESENT = {
    "Black Background": 26.6, "Abdominal Wall": 24.0, "Liver": 21.3, "Gastrointestinal Tract": 3.3,
    "Fat": 15.8, "Grasper": 3.3, "Connective Tissue": 11.5, "Blood": 4.9, "Cystic Duct": 1.2,
    "L-hook Electrocautery": 4.7, "Gallbladder": 7.6, "Hepatic Vein": 0.24, "Liver Ligament": 14.1,
}
