"""CASDM: class-aware semantic diffusion for surgical scenes, as a library.

The SPADE U-Net (``unet``), the losses (``losses``), schedulers by name (``schedulers``), the
map-to-image pipeline (``pipeline``), the text-prompted map generator (``mapgen``, ``prompts``,
``text``). It imports torch, diffusers and transformers, never the benchmark harness.

The models and pipelines are exported lazily (PEP 562): diffusers' ``from_pretrained`` finds custom
classes as attributes of the top-level package named in ``model_index.json``, while
``import casdm.labels`` (the data stages) does not pay for importing diffusers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"SPADEUNet": "casdm.unet", "CASDMPipeline": "casdm.pipeline", "MapGenerator": "casdm.mapgen",
            "MapGenPipeline": "casdm.mapgen", "IGNORE_INDEX": "casdm.labels"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'casdm' has no attribute {name!r}")
