"""Model kinds by name: ``params.yaml`` says ``kind: casdm`` (or ``sdm``, ``controlnet``, ...) and the
trainer and the sample stage ask this registry what to build, how to compute the loss and how to
sample.

The registry is a plain dict of the kinds this project ships, plus the entry-point group
``casdm_bench.kinds`` (``name = "package.module:KindClass"``) for kinds another distribution
declares. Every import is written out, so the layering test sees each arrow: imports point one way,
``benchmark`` -> ``baselines`` -> ``casdm``, and a new baseline is a module in ``baselines/`` (its
networks, loss, pipeline), a short adapter in ``benchmark/kinds/`` and one line here.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from benchmark.config import Params, TrainConfig
from benchmark.data.classes import ClassTable
from benchmark.kinds.base import KindContext, KindOptions, ModelKind
from benchmark.kinds.casdm import CASDMKind
from benchmark.kinds.controlnet import ControlNetKind
from benchmark.kinds.controlnet_sd import ControlNetSDKind
from benchmark.kinds.mapgen import MapGenKind
from benchmark.kinds.sdm import SDMKind

KINDS: dict[str, type[ModelKind]] = {"casdm": CASDMKind, "sdm": SDMKind, "controlnet": ControlNetKind,
                                     "controlnet-sd": ControlNetSDKind, "mapgen": MapGenKind}
ENTRY_POINTS = "casdm_bench.kinds"  # name: the kind's name; value: "module:ModelKind subclass"

for _name, _cls in KINDS.items():
    _cls.kind_name = _name


def register(name: str, cls: type[ModelKind]) -> type[ModelKind]:
    """Make ``cls`` available as ``kind: <name>`` (what an entry point's class is given at lookup)."""
    if not (isinstance(cls, type) and issubclass(cls, ModelKind)):
        raise TypeError(f"kind {name!r}: {cls!r} is not a ModelKind subclass")
    KINDS[name] = cls
    cls.kind_name = name
    return cls


def get_kind(name: str) -> type[ModelKind]:
    if name not in KINDS:
        for ep in entry_points(group=ENTRY_POINTS, name=name):
            return register(name, ep.load())
        declared = sorted({ep.name for ep in entry_points(group=ENTRY_POINTS)})
        raise ValueError(f"unknown model kind {name!r}; registered kinds: {sorted({*KINDS, *declared})}")
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
                      diffusion=params.diffusion, sampling=entry.sampling, preset=params.presets[params.train.preset],
                      seed=params.train.seed)
    return get_kind(entry.kind)(options, ctx)


def train_config(params: Params, name: str) -> TrainConfig:
    """``params.train`` as model ``name`` trains with it: its own ``training.lr`` where it has one."""
    lr = model_options(params, name).lr
    return params.train if lr is None else params.train.model_copy(update={"lr": lr})


def training_config(params: Params, name: str) -> dict:
    """Everything that determines a model's training run: hashed to decide whether to resume, and to
    find the run again (the leaderboard links each row to its training run by this hash)."""
    entry = params.models[name]
    return {"kind": entry.kind, "training": model_options(params, name).model_dump(),  # params.runtime: not here
            "preset": params.presets[params.train.preset].model_dump(),
            "train": train_config(params, name).run_config(), "diffusion": params.diffusion.model_dump(),
            "resolution": params.data.resolution}
