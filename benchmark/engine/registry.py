"""Model kinds by name: ``params.yaml`` says ``kind: casdm`` (or ``sdm``, ``controlnet``, ...) and the
trainer and the sample stage ask this registry what to build, how to compute the loss and how to
sample.

Kinds register themselves (``@register("name")``) when their module is imported. The registry
imports every module of the kind packages by name: the method's own kinds (``benchmark.kinds``),
the baselines (``baselines``) and any package another distribution declares under the entry-point
group ``casdm_bench.kinds``. So a baseline is one new file in ``baselines/``, and the harness never
imports a baseline by name (imports point one way: baselines -> benchmark.engine -> casdm).
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from benchmark.config import Params
from benchmark.data.classes import ClassTable
from benchmark.engine.kind import KindContext, KindOptions, ModelKind

KINDS: dict[str, type[ModelKind]] = {}
KIND_PACKAGES = ("benchmark.kinds", "baselines")
ENTRY_POINTS = "casdm_bench.kinds"  # value: a package whose modules register kinds


def register(name: str):
    """Class decorator: make a ``ModelKind`` subclass available as ``kind: <name>``."""

    def deco(cls: type[ModelKind]) -> type[ModelKind]:
        KINDS[name] = cls
        cls.kind_name = name
        return cls

    return deco


def discover() -> None:
    """Import every module of the kind packages (each registers its kinds)."""
    packages = [*KIND_PACKAGES, *(ep.value for ep in entry_points(group=ENTRY_POINTS))]
    for name in dict.fromkeys(packages):
        package = importlib.import_module(name)
        for mod in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{name}.{mod.name}")


def get_kind(name: str) -> type[ModelKind]:
    discover()
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; registered kinds: {sorted(KINDS)}")
    return KINDS[name]


def model_options(params: Params, model_name: str) -> KindOptions:
    """The validated ``training:`` block of ``params.models[model_name]`` (errors name the key)."""
    if model_name not in params.models:
        raise ValueError(f"unknown model {model_name!r}; params.yaml models: {sorted(params.models)}")
    entry = params.models[model_name]
    return get_kind(entry.kind).parse_options(entry.training, f"params.yaml: models.{model_name}.training")


def make_kind(params: Params, model_name: str, table: ClassTable) -> ModelKind:
    """The kind object for ``params.models[model_name]``, with its options and the values it needs."""
    options = model_options(params, model_name)
    entry = params.models[model_name]
    ctx = KindContext(name=model_name, table=table, resolution=params.data.resolution, steps=params.train.steps,
                      diffusion=params.diffusion, sampling=entry.sampling, preset=params.presets[params.train.preset])
    return get_kind(entry.kind)(options, ctx)
