"""The model-kind interface the shared trainer and sampler use (the registry beside it finds kinds by name).

A kind is a model family (``casdm``, ``sdm``, ``controlnet``, ...): how to build the network, its
training loss, how to sample from it. It receives the values it needs (``KindContext``) and its own
typed options (the model's ``training:`` block of params.yaml, validated by ``Options``), never the
whole params object, so a kind can be read, tested and reused on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmark.config import DiffusionConfig, SamplingRecipe, UNetPreset, describe
from benchmark.data.classes import ClassTable
from benchmark.devices import device


class KindOptions(BaseModel):
    """A kind's ``training:`` block. Subclass it with the kind's own fields; like params.yaml's
    sections it has no defaults (params.yaml holds every value) and refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    loss: str
    # the one optional key: a model whose learning rate was screened apart from train.lr's (docs/protocol.md)
    lr: float | None = Field(default=None, gt=0, le=1, description="this model's learning rate (absent or "
                             "null: train.lr)")


@dataclass(frozen=True)
class KindContext:
    """The values of params.yaml a kind is built from."""

    name: str  # the models: key, for messages
    table: ClassTable
    resolution: int  # data.resolution
    steps: int  # train.steps (kinds whose training has phases)
    diffusion: DiffusionConfig
    sampling: SamplingRecipe  # models.<name>.sampling
    preset: UNetPreset  # presets[train.preset]: the network widths
    seed: int = 0  # train.seed: the training seed of this run (its DVC stage is train@<name>-<seed>)


class ModelKind:
    """What the shared trainer needs from a model family. Subclass it and ``register`` a name."""

    losses: ClassVar[tuple[str, ...]] = ()  # the ``loss`` values this kind accepts
    Options: ClassVar[type[KindOptions]] = KindOptions
    find_unused_parameters: ClassVar[bool] = False  # DDP: True when a step may leave parameters out of the graph
    kind_name: ClassVar[str] = ""  # set by ``register``
    weights: ClassVar[str] = "unet"  # the exported folder of the main network (raw weights: ``<weights>_raw``)

    def __init__(self, options: KindOptions, ctx: KindContext):
        self.options, self.ctx = options, ctx
        self.name, self.table, self.sampling = ctx.name, ctx.table, ctx.sampling

    @classmethod
    def parse_options(cls, training: dict, where: str) -> KindOptions:
        """Validate a ``training:`` block; an error names the key under ``where`` and what was expected."""
        loss = training.get("loss")
        if loss not in cls.losses:
            raise ValueError(f"{where}.loss: {loss!r} is not a loss of kind {cls.kind_name!r}; "
                             f"expected one of {list(cls.losses)}")
        try:
            return cls.Options(**training)
        except ValidationError as exc:
            key, msg = describe(exc.errors()[0])
            raise ValueError(f"{where}.{key}: {msg} "
                             f"(kind {cls.kind_name!r} takes {sorted(cls.Options.model_fields)})") from None

    @property
    def train_stage(self) -> str:
        """The DVC stage that trains this model (named in 'not trained yet' errors)."""
        return f"train@{self.name}-{self.ctx.seed}"

    def prepare(self, data) -> None:
        """Learn what the kind needs from the training split before ``build`` (the map generator fits
        its prompt vocabulary here); ``data`` is the training ``PreparedDataset``."""

    def build(self) -> torch.nn.Module:
        """The trainable network (parameters with ``requires_grad`` are optimised and averaged by EMA)."""
        raise NotImplementedError

    def loss(self, model, images, labels, g: torch.Generator, accelerator) -> tuple[torch.Tensor, dict]:
        """The training loss of one batch and its named terms (logged separately)."""
        raise NotImplementedError

    def frame_weights(self, data) -> list[float] | None:
        """How often each training frame (row of ``data``) is drawn relative to the others; ``None``
        (every image model) keeps plain epochs, each frame once per epoch."""
        return None

    def conditioned_steps(self, steps: int) -> int:
        """How many of ``steps`` training steps condition the network on the map (the leaderboard shows
        it beside each model: a model that saw the map for fewer steps had a smaller budget)."""
        return steps

    def on_step(self, step: int, model) -> bool:
        """Called before each step with the unwrapped model (e.g. to start a training stage).
        Return True when the trainable weights were replaced, so the EMA restarts from them."""
        return False

    def save_state(self, folder: Path) -> None:
        """Extra state to checkpoint beside model/optimizer/EMA."""

    def load_state(self, folder: Path, model) -> None:
        """Restore what ``save_state`` wrote."""

    def pipeline(self, model):
        """A sampling pipeline around the (unwrapped) model, with the sampler from params.yaml."""
        raise NotImplementedError

    def preview(self, pipe, labels: torch.Tensor, steps: int, guidance: float, generator) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] for the training sample grid: what the model makes of these maps."""
        return pipe(labels, steps, guidance, generator=generator, output_type="pt").images

    def export(self, model, folder: Path) -> None:
        """Write the pipeline for ``model`` (the trainer swaps the EMA weights in first)."""
        self.pipeline(model).save_pretrained(folder)

    def export_raw(self, model, folder: Path) -> None:
        """Write the raw (non-EMA) weights beside the pipeline."""
        model.save_pretrained(folder / f"{self.weights}_raw")

    def load_model(self, folder: Path, suffix: str) -> torch.nn.Module:
        """The network saved in ``folder`` (``suffix`` "" for the EMA weights, "_raw" for the raw ones)."""
        raise NotImplementedError

    def load_pipeline(self, folder: Path, use_ema: bool = True):
        """The exported pipeline, with the sampler named in params.yaml (no retraining to change it)."""
        folder = Path(folder)
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(f"{folder}: no trained {self.kind_name} model; run `dvc repro {self.train_stage}` "
                                    "first")
        return self.pipeline(self.load_model(folder, "" if use_ema else "_raw").to(device()))
