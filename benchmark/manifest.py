"""The manifest of a folder of generated images (``samples/<model>/``, ``samples/maps/``): which map
made each image, with which seed, for which split. Written by the sample and maps stages, read by the
evaluation stages, so the three agree on one format."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from benchmark.io import write_json

FILE = "manifest.json"


class ImageRecord(BaseModel):
    """One generated image: ``image`` relative to the folder; ``map`` the class-id map that made it (a
    path of the prepared dataset, or relative to the folder when ``map_in_folder``)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    split: Literal["test", "train"]  # test: FID and semantic fidelity only; train: may train segmenters
    image: str
    map: str
    map_in_folder: bool | None = None  # generated maps live beside their images
    prompt: str | None = None  # the text prompt of a generated map
    seed: int


class Manifest(BaseModel):
    """``model`` (the row it feeds), the images, and how they were made (``made_with``: sampler, steps, ...)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    images: list[ImageRecord]
    made_with: dict[str, Any]

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / FILE, {"model": self.model, **self.made_with,
                                         "images": [r.model_dump(exclude_none=True) for r in self.images]})

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = Path(folder) / FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run the stage that writes {Path(folder)} first "
                                    "(`dvc repro sample@<model>` or `dvc repro maps`)")
        data = json.loads(path.read_text())
        try:
            return cls(model=data.pop("model"), images=data.pop("images"), made_with=data)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a manifest of generated images ({exc})") from None

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.images if r.split == name]

    def map_path(self, folder: Path, record: ImageRecord) -> Path:
        return Path(folder) / record.map if record.map_in_folder else Path(record.map)
