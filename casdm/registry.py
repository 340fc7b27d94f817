"""Model kinds by name: ``params.yaml`` says ``kind: casdm`` (or ``sdm``, ``controlnet``, ...) and the
trainer and the sample stage ask this registry what to build, how to compute the loss and how to
sample. A baseline is one module in ``baselines/`` that calls ``register``: it is found by import,
no other file changes.
"""
from __future__ import annotations

import importlib
import pkgutil

KINDS: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a ``ModelKind`` subclass available as ``kind: <name>``."""

    def deco(cls):
        KINDS[name] = cls
        cls.kind_name = name
        return cls

    return deco


def _discover() -> None:
    import casdm.kinds  # noqa: F401  (registers the method's own kinds)
    import casdm.mapgen  # noqa: F401  (the map generator)
    import baselines

    for mod in pkgutil.iter_modules(baselines.__path__):
        importlib.import_module(f"baselines.{mod.name}")


def get_kind(name: str) -> type:
    _discover()
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; registered kinds: {sorted(KINDS)}")
    return KINDS[name]


def make_kind(params, model_name: str, table):
    """The kind object for ``params.models[model_name]``, its recipe checked against what the kind supports."""
    if model_name not in params.models:
        raise ValueError(f"unknown model {model_name!r}; params.yaml models: {sorted(params.models)}")
    entry = params.models[model_name]
    kind = get_kind(entry.kind)
    if entry.training.loss not in kind.losses:
        raise ValueError(f"params.yaml: models.{model_name}.training.loss: {entry.training.loss!r} is not a loss of "
                         f"kind {entry.kind!r}; expected one of {list(kind.losses)}")
    return kind(params, model_name, table)
