"""ControlNet's pixel-space kind: the recipe in one run (``base_fraction`` of the steps train the base
U-Net on the class list alone, then a ControlNet copied from it trains with the base frozen). The
networks and the pipeline are ``baselines.controlnet``'s; this file adapts them to the trainer.
"""
from __future__ import annotations

from pathlib import Path

from diffusers import ControlNetModel, UNet2DConditionModel
from pydantic import Field

from baselines.controlnet import (
    COND_CHANNELS,
    ClassListPrompt,
    ControlNetPair,
    ControlNetPixelPipeline,
    base_unet,
)
from benchmark.kinds.base import KindOptions, ModelKind
from casdm.draws import as_draws
from casdm.labels import IGNORE_INDEX
from casdm.losses import mse
from casdm.objective import noised_batch
from casdm.schedulers import make_scheduler
from casdm.text import encode_phrases


class ControlNetOptions(KindOptions):
    text_encoder: str = Field(description="minilm | learned | clip:<local path or hub id>")
    base_fraction: float = Field(gt=0, lt=1, description="share of the steps that train the base U-Net")
    pretrained: str | None = Field(description="local Stable Diffusion folder: the latent route")
    conditioning_scale: float = Field(ge=0)
    learned_dim: int = Field(ge=8, description="embedding size for text_encoder: learned")
    drop_rate: float = Field(ge=0, le=1, description="class-list dropout (the map kept): a trained null for "
                             "classifier-free guidance")


class ControlNetKind(ModelKind):
    losses = ("controlnet",)
    Options = ControlNetOptions
    find_unused_parameters = True  # each phase leaves one of the two networks out of the graph

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        if self.options.pretrained is not None:
            raise ValueError(f"params.yaml: models.{self.name}.training.pretrained: the latent route is "
                             "kind 'controlnet-sd' (benchmark/kinds/controlnet_sd.py); set kind: controlnet-sd")
        self.noise_scheduler = make_scheduler("ddpm", ctx.diffusion)
        self.switch = max(1, int(ctx.steps * self.options.base_fraction))

    def build(self) -> ControlNetPair:
        names = self.table.names
        enc = self.options.text_encoder
        dim = self.options.learned_dim if enc == "learned" else None
        emb = None if enc == "learned" else encode_phrases(enc, [n.lower() for n in names])
        prompt = ClassListPrompt(len(names), dim or emb.shape[1], tuple(map(tuple, self.table.palette()[: len(names)].tolist())))
        if emb is not None:
            prompt.embed.weight.data.copy_(emb)
            prompt.requires_grad_(False)  # a pretrained encoder stays frozen
        unet = base_unet(self.ctx.preset, self.ctx.resolution, prompt.config.dim)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS)
        return ControlNetPair(prompt, unet, controlnet)

    def on_step(self, step: int, model) -> bool:
        """Phase 2 from ``switch``: freeze the base, copy it into the ControlNet once, reset the EMA."""
        model.use_control = step >= self.switch
        if step < self.switch:
            return False
        model.unet.requires_grad_(False)
        model.prompt.requires_grad_(False)
        if step == self.switch:
            fresh = ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=COND_CHANNELS)
            model.controlnet.load_state_dict(fresh.state_dict())
            return True
        return False

    def conditioned_steps(self, steps: int) -> int:
        """Only the ControlNet phase sees the map; the base phase sees the class list alone."""
        return steps - self.switch

    def loss(self, model, images, labels, g, accelerator):
        g = as_draws(g)
        drop = False
        if self.options.drop_rate > 0:  # text dropout: the null of classifier-free guidance gets trained
            drop = (g.rand((images.shape[0],)) < self.options.drop_rate).to(images.device)
        d = self.ctx.diffusion
        nb = noised_batch(self.noise_scheduler, images, g, offset_noise=d.offset_noise, snr_gamma=d.snr_gamma)
        with accelerator.autocast():
            out = model(nb.x_t, nb.t, labels, drop_text=drop)
        name = "controlnet_mse" if accelerator.unwrap_model(model).use_control else "base_mse"
        terms = {name: mse(out, nb.target, ignore=labels == IGNORE_INDEX, sample_weights=nb.sample_weights)}
        return terms[name], terms

    def pipeline(self, model: ControlNetPair) -> ControlNetPixelPipeline:
        s = self.sampling
        pipe = ControlNetPixelPipeline(model.prompt, model.unet, model.controlnet,
                                       make_scheduler(s.scheduler, self.ctx.diffusion, sampling=True),
                                       num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                                       conditioning_scale=self.options.conditioning_scale)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def export_raw(self, model: ControlNetPair, folder: Path) -> None:
        for part in ("prompt", "unet", "controlnet"):
            getattr(model, part).save_pretrained(folder / f"{part}_raw")

    def load_model(self, folder: Path, suffix: str) -> ControlNetPair:
        return ControlNetPair(ClassListPrompt.from_pretrained(folder / f"prompt{suffix}"),
                              UNet2DConditionModel.from_pretrained(folder / f"unet{suffix}"),
                              ControlNetModel.from_pretrained(folder / f"controlnet{suffix}"))
