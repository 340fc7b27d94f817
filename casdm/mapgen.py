"""The text-prompted segmentation-map generator (casdm.md section 5): a diffusion model over maps.

A map is its one-hot encoding scaled to [-1, 1] (K channels; ignore pixels -1 everywhere), noised as
usual and denoised by diffusers' ``UNet2DConditionModel``, which predicts the clean map's class
logits: trained with cross-entropy (ignore pixels left out), sampled with the scheduler in
``prediction_type="sample"`` mode fed 2 * softmax - 1. Why not epsilon prediction: on one-hot maps
an epsilon model trained 400 CPU steps still produced pure speckle (loss 0.42 at every t, 9 % of
pixels right from t = 800), while the clean map is a classification the network learns quickly.
The final sample is snapped to class ids by argmax, so every generated pixel is a valid class. The condition is one token per prompt
clause ("Grasper, small, centre, two regions"): the clause's embedding by a frozen text encoder
(``minilm``, ``clip:<path>``), or, as the control, ``learned`` embeddings of its structured fields.
The U-Net cross-attends to these tokens; an empty prompt (one zero token) is the null condition of
classifier-free guidance.

Trained by the shared trainer as model kind ``mapgen`` (loss ``map_ce``); the size thresholds of
the prompt vocabulary are fitted on the training maps and saved in the model's config, so a saved
generator reads and checks prompts exactly as it was trained on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from pydantic import BaseModel, ConfigDict, Field
import torch.nn.functional as F
from torch import nn

from benchmark.data.classes import IGNORE_INDEX
from casdm.kinds import ModelKind
from casdm.losses import class_pixel_weights
from casdm.pipeline import to_onehot
from casdm.prompts import LOCATIONS, QUANTITIES, SIZES, Prompt, Vocabulary, describe_map, field_ids, parse_prompt
from casdm.registry import register
from casdm.schedulers import make_scheduler
from casdm.text import encode_phrases


def encode_maps(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, H, W] ids -> [B, K, H, W] in {-1, 1} (ignore pixels -1 in every channel)."""
    return to_onehot(labels, num_classes) * 2 - 1


def x0_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """The clean-map estimate the scheduler steps with: the expected one-hot, in [-1, 1]."""
    return logits.float().softmax(1) * 2 - 1


def map_scheduler(name: str, diffusion):
    """The sampler on the training schedule, in clean-sample (x0) prediction mode."""
    return make_scheduler(name, diffusion.model_copy(update={"prediction_type": "sample"}))


class FieldEmbedding(nn.Module):
    """The ``learned`` control: class + size + location + quantity embeddings, summed (index 0 = unspecified)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(n + 1, dim) for n in
                                     (num_classes, len(SIZES), len(LOCATIONS), len(QUANTITIES))])

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        return sum(t(fields[..., i]) for i, t in enumerate(self.tables))


class MapGenerator(ModelMixin, ConfigMixin):
    """UNet2DConditionModel over relaxed one-hot maps, cross-attending to one token per class clause."""

    @register_to_config
    def __init__(self, num_classes: int = 13, sample_size: int = 64, text_encoder: str = "minilm", text_dim: int = 384,
                 block_out_channels: tuple = (16, 32, 64, 64), attention_levels: tuple = (False, False, True, True),
                 layers_per_block: int = 1, cross_attention_dim: int = 64, attention_head_dim: int = 8,
                 norm_num_groups: int = 8, vocabulary: dict | None = None):
        super().__init__()
        learned = text_encoder == "learned"
        self.fields = FieldEmbedding(num_classes, cross_attention_dim) if learned else None
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
        self.unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=num_classes, out_channels=num_classes,
            block_out_channels=tuple(block_out_channels), down_block_types=down, up_block_types=up,
            layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            encoder_hid_dim=None if learned else text_dim, encoder_hid_dim_type=None if learned else "text_proj")

    @property
    def vocab(self) -> Vocabulary:
        if not self.config.vocabulary:
            raise ValueError("this map generator has no prompt vocabulary in its config (not trained by casdm)")
        return Vocabulary.from_dict(self.config.vocabulary)

    def forward(self, sample, timestep, fields, text=None, mask=None) -> torch.Tensor:
        hidden = self.fields(fields) if self.fields is not None else text.to(sample.dtype)
        return self.unet(sample, timestep, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample


class PromptConditioner:
    """Prompts -> padded token batch: ``fields`` [B, L, 4], ``text`` [B, L, D] (None for ``learned``),
    ``mask`` [B, L]. Clause embeddings are cached: the vocabulary of clauses is small and repeats."""

    def __init__(self, text_encoder: str, vocab: Vocabulary, text_dim: int):
        self.text_encoder, self.vocab, self.text_dim = text_encoder, vocab, text_dim
        self.cache: dict[str, torch.Tensor] = {}

    def embed(self, clauses: list[str]) -> torch.Tensor:
        new = sorted({c for c in clauses if c not in self.cache})
        if new:
            self.cache.update(zip(new, encode_phrases(self.text_encoder, new)))
        return torch.stack([self.cache[c] for c in clauses]) if clauses else torch.zeros(0, self.text_dim)

    def __call__(self, prompts: list[Prompt], device) -> dict:
        b, length = len(prompts), max([1, *(len(p) for p in prompts)])
        fields = torch.zeros(b, length, 4, dtype=torch.long)
        mask = torch.zeros(b, length)
        mask[:, 0] = 1  # an empty prompt attends to one zero token: the null condition
        text = None if self.text_encoder == "learned" else torch.zeros(b, length, self.text_dim)
        for i, p in enumerate(prompts):
            if not p:
                continue
            fields[i, : len(p)] = torch.tensor(field_ids(p, self.vocab))
            mask[i, : len(p)] = 1
            if text is not None:
                text[i, : len(p)] = self.embed([c.text() for c in p])
        return {"fields": fields.to(device), "text": None if text is None else text.to(device), "mask": mask.to(device)}


@dataclass
class MapGenOutput(BaseOutput):
    maps: torch.Tensor | np.ndarray  # [B, H, W] class ids
    prompts: list


class MapGenPipeline(DiffusionPipeline):
    """Prompts in (text or parsed), class-id maps out; a thin loop over the generator and a scheduler."""

    def __init__(self, mapgen: MapGenerator, scheduler):
        super().__init__()
        self.register_modules(mapgen=mapgen, scheduler=scheduler)
        self._conditioner: PromptConditioner | None = None

    @property
    def conditioner(self) -> PromptConditioner:
        if self._conditioner is None:
            c = self.mapgen.config
            self._conditioner = PromptConditioner(c.text_encoder, self.mapgen.vocab, c.text_dim)
        return self._conditioner

    @torch.no_grad()
    def __call__(self, prompts: list[str | Prompt], num_inference_steps: int = 25, guidance_scale: float = 1.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pt",
                 return_dict: bool = True):
        """Guidance s on the logits: l(empty prompt) + s * (l(prompt) - l(empty prompt))."""
        parsed = [parse_prompt(p, self.mapgen.vocab) if isinstance(p, str) else tuple(p) for p in prompts]
        c, b = self.mapgen.config, len(parsed)
        cond = self.conditioner(parsed, self.device)
        null = self.conditioner([()] * b, self.device) if guidance_scale != 1.0 else None
        x = randn_tensor((b, c.num_classes, c.sample_size, c.sample_size), generator=generator, device=self.device,
                         dtype=self.mapgen.dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = self.scheduler.scale_model_input(x, t)
            logits = self.mapgen(inp, t, **cond)
            if null is not None:  # guidance on the logits
                null_logits = self.mapgen(inp, t, **null)
                logits = null_logits + guidance_scale * (logits - null_logits)
            x = self.scheduler.step(x0_from_logits(logits).to(x.dtype), t, x, generator=generator).prev_sample
        maps = x.argmax(1)
        if output_type == "np":
            maps = maps.cpu().numpy().astype(np.uint8)
        return MapGenOutput(maps=maps, prompts=parsed) if return_dict else (maps, parsed)


class MapGenOptions(BaseModel):
    """``training.options`` of a ``mapgen`` entry (built from params.yaml's ``maps:`` section)."""

    model_config = ConfigDict(extra="forbid")
    text_encoder: str = Field("minilm", description="minilm | learned | clip:<local path or hub id>")
    block_out_channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 64], min_length=2)
    attention_levels: list[bool] = Field(default_factory=lambda: [False, False, True, True], min_length=2)
    layers_per_block: int = Field(1, ge=1)
    cross_attention_dim: int = Field(64, ge=8)
    attention_head_dim: int = Field(8, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    min_region: float = Field(0.002, gt=0, lt=0.5, description="specks under this share of the map are ignored")
    class_aware: bool = Field(False, description="cross-entropy weighted like CA-MSE (balanced): small classes count")


@register("mapgen")
class MapGenKind(ModelKind):
    """The map generator on the shared trainer: prompts are built from each (augmented) training map."""

    losses = ("map_ce",)
    options_schema = MapGenOptions

    def __init__(self, params, name, table):
        super().__init__(params, name, table)
        o = self.options
        if len(o.attention_levels) != len(o.block_out_channels):
            raise ValueError(f"params.yaml: maps preset: attention_levels ({len(o.attention_levels)}) and "
                             f"block_out_channels ({len(o.block_out_channels)}) must have the same length")
        self.noise_scheduler = map_scheduler("ddpm", params.diffusion)
        self.vocab: Vocabulary | None = None
        self.conditioner: PromptConditioner | None = None

    def prepare(self, data) -> None:
        """Fit the size thresholds on the training maps (before ``build``: they go into the config)."""
        from PIL import Image

        from casdm.prompts import fit_vocabulary

        maps = (np.asarray(Image.open(data.root / "masks" / f"{r['id']}.png")) for r in data.rows)
        self.vocab = fit_vocabulary(maps, self.table.names, self.options.min_region)

    def text_dim(self) -> int:
        from casdm.text import embedding_dim

        return self.options.cross_attention_dim if self.options.text_encoder == "learned" else \
            embedding_dim(self.options.text_encoder)

    def build(self) -> MapGenerator:
        if self.vocab is None:
            raise RuntimeError("MapGenKind.prepare(data) must run before build()")
        o = self.options
        model = MapGenerator(num_classes=self.table.num_classes, sample_size=self.params.data.resolution,
                             text_encoder=o.text_encoder, text_dim=self.text_dim(),
                             block_out_channels=tuple(o.block_out_channels), attention_levels=tuple(o.attention_levels),
                             layers_per_block=o.layers_per_block, cross_attention_dim=o.cross_attention_dim,
                             attention_head_dim=o.attention_head_dim, norm_num_groups=o.norm_num_groups,
                             vocabulary=self.vocab.to_dict())
        self.conditioner = PromptConditioner(o.text_encoder, self.vocab, model.config.text_dim)
        return model

    def loss(self, model, images, labels, g, accelerator):
        sched, b = self.noise_scheduler, labels.shape[0]
        prompts = [describe_map(m, self.vocab) for m in labels.cpu().numpy()]
        drop = (torch.rand(b, generator=g) < self.recipe.drop_rate).tolist()
        cond = self.conditioner([() if d else p for p, d in zip(prompts, drop)], labels.device)
        x0 = encode_maps(labels, self.table.num_classes)
        noise = torch.randn(x0.shape, generator=g).to(labels.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=g).to(labels.device)
        with accelerator.autocast():
            logits = model(sched.add_noise(x0, noise, t), t, **cond)
        ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX, reduction="none")
        valid = (labels != IGNORE_INDEX).float()
        if self.options.class_aware:  # every class present in a map weighs the same, whatever its size
            w = class_pixel_weights(to_onehot(labels, self.table.num_classes), variant="balanced")[:, 0] * valid
        else:
            w = valid
        terms = {"map_ce": (ce * w).sum() / w.sum().clamp_min(1.0)}
        return terms["map_ce"], terms

    def pipeline(self, model) -> MapGenPipeline:
        pipe = MapGenPipeline(model, map_scheduler(self.entry.sampling.scheduler, self.params.diffusion))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def preview(self, pipe, labels, steps, guidance, generator) -> torch.Tensor:
        """Maps generated from the prompts of ``labels``, coloured like the real maps."""
        prompts = [describe_map(m, self.vocab or pipe.mapgen.vocab) for m in labels.cpu().numpy()]
        maps = pipe(prompts, steps, guidance, generator=generator, output_type="np").maps
        return torch.from_numpy(self.table.colourise(maps)).permute(0, 3, 1, 2).float() / 255

    def export_raw(self, model, folder: Path) -> None:
        model.save_pretrained(folder / "mapgen_raw")

    def load_pipeline(self, folder: Path, use_ema: bool = True) -> MapGenPipeline:
        folder = Path(folder)
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(f"{folder}: no trained map generator; run `dvc repro train-maps` first")
        model = MapGenerator.from_pretrained(folder / ("mapgen" if use_ema else "mapgen_raw"))
        self.vocab = model.vocab
        return self.pipeline(model).to("cuda" if torch.cuda.is_available() else "cpu")
