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
classifier-free guidance. With ``pooled_prompt`` the sum of the tokens is also added to the timestep
embedding (diffusers' ``class_embed_type="projection"``, as SDXL adds its pooled text embedding), so
the prompt reaches every ResNet block, not only the attention levels. Why: cross-attention alone, at
the two coarsest levels, was learned so weakly in 300 CPU steps that the generator drew the same
average map for every prompt (prompt-vs-empty logit change 0.03 on logits of size 1.8), so it never
drew a requested rare class.

With ``posterior_skip`` the network's output is a residual on the per-pixel posterior that the noisy
map alone gives: for a +-1 one-hot channel noised as sqrt(a) x0 + sqrt(1 - a) eps, the log-odds of
the class are 2 sqrt(a) / (1 - a) times the channel (``posterior_logits``). The network then spends
its steps on layout and the prompt, not on learning to copy its input: without it, 300 CPU steps left
a rare class at 0 predicted pixels even at t = 50, where the input shows it almost noise-free.

With ``prompt_layout`` the prompt is also drawn as K extra input channels (``render_layout``: one soft
disc per clause, in its class's channel, at its location's cell, as large as its size word asks),
concatenated to the noisy map, as layout-to-image models feed boxes (GLIGEN, LayoutDiffusion). Why:
with the tokens alone, 300 CPU steps never drew a requested rare class, whatever the guidance, the
pooled prompt, the posterior skip or class-aware CE (bench/results/maps_levers_*.json); a
pixel-aligned hint is read by the first convolution. The clause tokens still go to cross-attention.
With ``layout_gain`` g the drawn prompt is also added to the output, g x disc, as the class log-odds
the prompt gives (the posterior skip's idea, for the prompt instead of the noisy map): the network
learns the residual, real shapes instead of discs. Why: with the layout as input only, 300 steps
still predicted no rare pixel even at t = 10, where the input shows the class (a per-class output
learned from ~1 % of the pixels moves too little at lr 5e-4 in 300 steps); the gain is the
class-conditional sampling strength, and it does not depend on training long enough.

The size thresholds of the prompt vocabulary are fitted on the training maps and saved in the model's
config, so a saved generator reads and checks prompts exactly as it was trained on them. (The
benchmark trains it as model kind ``mapgen``: ``benchmark/kinds/mapgen.py``.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from casdm.pipeline import sampler_settings, to_onehot
from casdm.prompts import LOCATIONS, QUANTITIES, SIZES, Prompt, Vocabulary, field_ids, parse_prompt, render_layout
from casdm.schedulers import make_scheduler
from casdm.text import encode_phrases


def encode_maps(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, H, W] ids -> [B, K, H, W] in {-1, 1} (ignore pixels -1 in every channel)."""
    return to_onehot(labels, num_classes) * 2 - 1


def x0_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """The clean-map estimate the scheduler steps with: the expected one-hot, in [-1, 1]."""
    return logits.float().softmax(1) * 2 - 1


def posterior_logits(sample: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Per-pixel class log-odds the noisy map itself carries (up to a per-pixel constant): 2 sqrt(a) / (1 - a) x_t.

    ``alpha_bar`` [B] is the cumulative alpha at each sample's timestep; 0 (zero terminal SNR) gives 0."""
    a = alpha_bar.float().clamp(0, 1 - 1e-6).view(-1, 1, 1, 1)
    return sample.float() * (2 * a.sqrt() / (1 - a))


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
    def __init__(self, num_classes: int, sample_size: int, text_encoder: str, text_dim: int, block_out_channels: tuple,
                 attention_levels: tuple, layers_per_block: int, cross_attention_dim: int, attention_head_dim: int,
                 norm_num_groups: int, vocabulary: dict | None = None, pooled_prompt: bool = False,
                 posterior_skip: bool = False, prompt_layout: bool = False, layout_gain: float = 0.0):
        """Widths come from the benchmark's ``maps.generator.training`` block; ``vocabulary`` from
        ``Vocabulary.to_dict()`` of the training maps. ``pooled_prompt`` and ``posterior_skip`` are False
        here only so that generators saved before they existed load as they were trained; the benchmark
        sets them from ``maps:`` (``prompt_layout`` likewise). With ``posterior_skip`` the caller adds ``posterior_logits`` to the
        output (``MapGenPipeline`` does; so must a training loss)."""
        super().__init__()
        if layout_gain and not prompt_layout:
            raise ValueError("layout_gain needs prompt_layout: the gain scales the drawn prompt")
        learned = text_encoder == "learned"
        self.fields = FieldEmbedding(num_classes, cross_attention_dim) if learned else None
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
        self.unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=num_classes * (2 if prompt_layout else 1), out_channels=num_classes,
            block_out_channels=tuple(block_out_channels), down_block_types=down, up_block_types=up,
            layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            encoder_hid_dim=None if learned else text_dim, encoder_hid_dim_type=None if learned else "text_proj",
            class_embed_type="projection" if pooled_prompt else None,
            projection_class_embeddings_input_dim=(cross_attention_dim if learned else text_dim) if pooled_prompt else None)

    @property
    def vocab(self) -> Vocabulary:
        if not self.config.vocabulary:
            raise ValueError("this map generator has no prompt vocabulary in its config (not trained by casdm)")
        return Vocabulary.from_dict(self.config.vocabulary)

    def forward(self, sample, timestep, fields, text=None, mask=None, layout=None) -> torch.Tensor:
        if self.config.prompt_layout:
            if layout is None:
                raise ValueError("this generator was trained with prompt_layout: pass the prompts' layout")
            sample = torch.cat([sample, layout.to(sample.dtype)], 1)
        hidden = self.fields(fields) if self.fields is not None else text.to(sample.dtype)
        pooled = None
        if self.config.pooled_prompt:  # the bag of clauses: each clause counts the same, however many there are
            pooled = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(1) if mask is not None else hidden.sum(1)
        logits = self.unet(sample, timestep, encoder_hidden_states=hidden, encoder_attention_mask=mask,
                           class_labels=pooled).sample
        if self.config.layout_gain:  # the drawn prompt as class log-odds: the network learns the residual
            logits = logits + self.config.layout_gain * layout.to(logits.dtype)
        return logits


class PromptConditioner:
    """Prompts -> padded token batch: ``fields`` [B, L, 4], ``text`` [B, L, D] (None for ``learned``),
    ``mask`` [B, L], and with ``layout_size`` the prompts drawn, ``layout`` [B, K, S, S] (``render_layout``;
    all zero for the empty prompt). Clause embeddings are cached: the clauses are few and repeat."""

    def __init__(self, text_encoder: str, vocab: Vocabulary, text_dim: int, layout_size: int | None = None):
        self.text_encoder, self.vocab, self.text_dim = text_encoder, vocab, text_dim
        self.layout_size = layout_size
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
        out = {"fields": fields.to(device), "text": None if text is None else text.to(device), "mask": mask.to(device)}
        if self.layout_size:
            out["layout"] = torch.from_numpy(np.stack([render_layout(p, self.vocab, self.layout_size)
                                                       for p in prompts])).to(device)
        return out


@dataclass
class MapGenOutput(BaseOutput):
    maps: torch.Tensor | np.ndarray  # [B, H, W] class ids
    prompts: list


class MapGenPipeline(DiffusionPipeline):
    """Prompts in (text or parsed), class-id maps out; a thin loop over the generator and a scheduler."""

    def __init__(self, mapgen: MapGenerator, scheduler, num_inference_steps: int = 25, guidance_scale: float = 1.0):
        """The sampler the generator was benchmarked with is saved in model_index.json (see CASDMPipeline)."""
        super().__init__()
        self.register_modules(mapgen=mapgen, scheduler=scheduler)
        self.register_to_config(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        self._conditioner: PromptConditioner | None = None

    @property
    def conditioner(self) -> PromptConditioner:
        if self._conditioner is None:
            c = self.mapgen.config
            self._conditioner = PromptConditioner(c.text_encoder, self.mapgen.vocab, c.text_dim,
                                                  c.sample_size if c.prompt_layout else None)
        return self._conditioner

    @torch.no_grad()
    def __call__(self, prompts: list[str | Prompt], num_inference_steps: int | None = None,
                 guidance_scale: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pt",
                 return_dict: bool = True):
        """Guidance s on the logits: l(empty prompt) + s * (l(prompt) - l(empty prompt)). Steps and guidance
        left out: the saved sampler's."""
        num_inference_steps, guidance_scale = sampler_settings(self.config, num_inference_steps, guidance_scale)
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
            if null is not None:  # guidance on the network's logits; the input's own evidence is added once
                null_logits = self.mapgen(inp, t, **null)
                logits = null_logits + guidance_scale * (logits - null_logits)
            if c.posterior_skip:
                logits = logits.float() + posterior_logits(x, self.scheduler.alphas_cumprod[t].expand(b))
            x = self.scheduler.step(x0_from_logits(logits).to(x.dtype), t, x, generator=generator).prev_sample
        maps = x.argmax(1)
        if output_type == "np":
            maps = maps.cpu().numpy().astype(np.uint8)
        return MapGenOutput(maps=maps, prompts=parsed) if return_dict else (maps, parsed)
