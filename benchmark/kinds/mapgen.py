"""The map generator's kind: ``casdm.mapgen.MapGenerator`` trained by the shared trainer (loss
``map_ce``), the prompt of every (augmented) training map built on the fly.

Its options are params.yaml's ``maps.generator.training`` block, an ordinary model entry's: the
network's widths, the text encoder, the speck threshold, the training levers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator, model_validator

from benchmark.kinds.base import KindOptions, ModelKind
from casdm.draws import as_draws
from casdm.labels import IGNORE_INDEX
from casdm.losses import class_pixel_weights
from casdm.mapgen import (
    MapGenerator,
    MapGenPipeline,
    PromptConditioner,
    encode_maps,
    map_scheduler,
    posterior_logits,
)
from casdm.pipeline import to_onehot
from casdm.prompts import Vocabulary, describe_map, fit_vocabulary
from casdm.text import embedding_dim


class MapPreset(BaseModel):
    """Widths of the map generator's UNet2DConditionModel (one entry per resolution level)."""

    block_out_channels: list[int] = Field(min_length=2)
    attention_levels: list[bool] = Field(min_length=2, description="cross-attention to the prompt at this level")
    layers_per_block: int = Field(ge=1)
    cross_attention_dim: int = Field(ge=8)
    attention_head_dim: int = Field(ge=1)
    norm_num_groups: int = Field(ge=1)

    @model_validator(mode="after")
    def _levels(self):
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries, block_out_channels "
                             f"{len(self.block_out_channels)}: give one per level")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"every block_out_channels entry must be a multiple of norm_num_groups "
                             f"({self.norm_num_groups}), got {self.block_out_channels}")
        return self



class MapGenOptions(KindOptions, MapPreset):
    """``maps.generator.training``: the generator's widths and its own settings."""

    loss: Literal["map_ce"]
    drop_rate: float = Field(ge=0, le=1, description="empty-prompt dropout (classifier-free guidance)")
    text_encoder: str = Field(description="minilm | learned | clip:<local path or hub id>")
    min_region: float = Field(gt=0, lt=0.5, description="specks under this share of the map are ignored")
    class_aware: bool = Field(description="cross-entropy weighted like CA-MSE (balanced): small classes count")
    rare_oversample: float = Field(ge=1, description="maps holding a rare class drawn this many times as often")
    pooled_prompt: bool = Field(description="summed clause tokens added to the timestep embedding too")
    posterior_skip: bool = Field(description="the output is a residual on the noisy map's own class log-odds")
    prompt_layout: bool = Field(description="the prompt also drawn as K input channels (a disc per clause)")
    layout_gain: float = Field(ge=0, description="the drawn prompt added to the logits, times this (0 = off)")

    @field_validator("text_encoder")
    @classmethod
    def _encoder(cls, v: str) -> str:
        if v not in ("minilm", "learned") and not (v.startswith("clip:") and len(v) > 5):
            raise ValueError(f"unknown text encoder {v!r}; expected minilm, learned or clip:<local path or hub id>")
        return v


class MapGenKind(ModelKind):
    """The map generator on the shared trainer: prompts are built from each (augmented) training map."""

    losses = ("map_ce",)
    Options = MapGenOptions
    weights = "mapgen"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.noise_scheduler = map_scheduler("ddpm", ctx.diffusion)
        self.vocab: Vocabulary | None = None
        self.conditioner: PromptConditioner | None = None

    @property
    def train_stage(self) -> str:
        return "train-maps"

    def prepare(self, data) -> None:
        """Fit the size thresholds on the training maps (before ``build``: they go into the config)."""
        self.vocab = fit_vocabulary(data.masks(), self.table.names, self.options.min_region)

    def frame_weights(self, data) -> list[float] | None:
        """Training balance without touching the loss: a map holding a rare class (above the speck
        threshold) is drawn ``rare_oversample`` times as often, so the generator sees the few maps it
        must learn to draw rare classes from more than a handful of times."""
        k = self.options.rare_oversample
        if k == 1:
            return None
        rare, floor = self.table.rare_ids, self.options.min_region
        return [k if any((m == c).mean() >= floor for c in rare) else 1.0 for m in data.masks()]

    def text_dim(self) -> int:
        o = self.options
        return o.cross_attention_dim if o.text_encoder == "learned" else embedding_dim(o.text_encoder)

    def build(self) -> MapGenerator:
        if self.vocab is None:
            raise RuntimeError("MapGenKind.prepare(data) must run before build()")
        o = self.options
        model = MapGenerator(num_classes=self.table.num_classes, sample_size=self.ctx.resolution,
                             text_encoder=o.text_encoder, text_dim=self.text_dim(),
                             block_out_channels=tuple(o.block_out_channels), attention_levels=tuple(o.attention_levels),
                             layers_per_block=o.layers_per_block, cross_attention_dim=o.cross_attention_dim,
                             attention_head_dim=o.attention_head_dim, norm_num_groups=o.norm_num_groups,
                             vocabulary=self.vocab.to_dict(), pooled_prompt=o.pooled_prompt,
                             posterior_skip=o.posterior_skip, prompt_layout=o.prompt_layout,
                             layout_gain=o.layout_gain)
        self.conditioner = PromptConditioner(o.text_encoder, self.vocab, model.config.text_dim,
                                             self.ctx.resolution if o.prompt_layout else None)
        return model

    def loss(self, model, images, labels, g, accelerator):
        sched, b, g = self.noise_scheduler, labels.shape[0], as_draws(g)
        prompts = [describe_map(m, self.vocab) for m in labels.cpu().numpy()]
        drop = (g.rand((b,)) < self.options.drop_rate).tolist()
        cond = self.conditioner([() if d else p for p, d in zip(prompts, drop)], labels.device)
        x0 = encode_maps(labels, self.table.num_classes)
        noise = g.randn(tuple(x0.shape)).to(labels.device)
        t = g.randint(sched.config.num_train_timesteps, (b,)).to(labels.device)
        xt = sched.add_noise(x0, noise, t)
        with accelerator.autocast():
            logits = model(xt, t, **cond)
        if self.options.posterior_skip:
            logits = logits.float() + posterior_logits(xt, sched.alphas_cumprod.to(xt.device)[t])
        ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX, reduction="none")
        valid = (labels != IGNORE_INDEX).float()
        if self.options.class_aware:  # every class present in a map weighs the same, whatever its size
            w = class_pixel_weights(to_onehot(labels, self.table.num_classes), variant="balanced")[:, 0] * valid
        else:
            w = valid
        terms = {"map_ce": (ce * w).sum() / w.sum().clamp_min(1.0)}
        return terms["map_ce"], terms

    def pipeline(self, model) -> MapGenPipeline:
        s = self.sampling
        pipe = MapGenPipeline(model, map_scheduler(s.scheduler, self.ctx.diffusion),
                              num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def preview(self, pipe, labels, steps, guidance, generator) -> torch.Tensor:
        """Maps generated from the prompts of ``labels``, coloured like the real maps."""
        prompts = [describe_map(m, self.vocab or pipe.mapgen.vocab) for m in labels.cpu().numpy()]
        maps = pipe(prompts, steps, guidance, generator=generator, output_type="np").maps
        return torch.from_numpy(self.table.colourise(maps)).permute(0, 3, 1, 2).float() / 255

    def load_model(self, folder: Path, suffix: str) -> MapGenerator:
        model = MapGenerator.from_pretrained(folder / f"mapgen{suffix}")
        self.vocab = model.vocab
        return model
