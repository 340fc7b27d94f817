"""ControlNet (Zhang et al. 2023) on the shared harness: diffusers' ``ControlNetModel`` beside a
``UNet2DConditionModel``; control image = the colour-coded map, text = the classes present.

CPU / offline route (``options.pretrained: null``), in pixel space, the ControlNet recipe in one run:
the base U-Net is first trained with the class-list condition alone (``base_fraction`` of the
steps), then a ControlNet copied from it is trained with the base frozen. The class list is one token
per class: its text embedding (``text_encoder``: ``minilm`` offline, ``clip:<path>``, or ``learned``)
where the class is present, zeros where it is absent.

Paper-scale route (``options.pretrained: /path/to/stable-diffusion``) lives in
``controlnet_sd.py``: latent space through the checkpoint's VAE, CLIP prompts, ControlNet only.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor
from pydantic import Field
from torch import nn

from benchmark.engine.kind import KindOptions, ModelKind
from benchmark.engine.registry import register
from casdm.draws import as_draws
from casdm.losses import draw_noise, mse, timestep_weights, training_target
from casdm.schedulers import make_scheduler
from casdm.text import encode_phrases
from casdm.unet import groups_for

COND_CHANNELS = (16,)  # pixel space: the control image already has the sample's size, no down-sampling


class ControlNetOptions(KindOptions):
    text_encoder: str = Field(description="minilm | learned | clip:<local path or hub id>")
    base_fraction: float = Field(gt=0, lt=1, description="share of the steps that train the base U-Net")
    pretrained: str | None = Field(description="local Stable Diffusion folder: the latent route")
    conditioning_scale: float = Field(ge=0)
    learned_dim: int = Field(ge=8, description="embedding size for text_encoder: learned")
    drop_rate: float = Field(ge=0, le=1, description="class-list dropout (the map kept): a trained null for "
                             "classifier-free guidance")


def colour_map(labels: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """[B, H, W] ids -> [B, 3, H, W] control image: ``colours`` ([K, 3] in [0, 1]); ignore pixels white."""
    white = torch.ones(256 - len(colours), 3, device=colours.device, dtype=colours.dtype)
    return torch.cat([colours, white])[labels.long().clamp(0, 255)].permute(0, 3, 1, 2)


class ClassListPrompt(ModelMixin, ConfigMixin):
    """Class-list prompt (one token per class present) and control image from a class-id map."""

    @register_to_config
    def __init__(self, num_classes: int = 13, dim: int = 384, palette: tuple = ()):
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)
        self.register_buffer("colours", torch.tensor(palette, dtype=torch.float32).view(-1, 3) / 255.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """[B, H, W] ids -> [B, K, D]: class c's token where c is in the map, zeros where it is not."""
        K = self.config.num_classes
        present = torch.stack([(labels == c).flatten(1).any(1) for c in range(K)], dim=1).to(self.embed.weight)
        return present.unsqueeze(-1) * self.embed.weight.unsqueeze(0)

    def control_image(self, labels: torch.Tensor) -> torch.Tensor:
        return colour_map(labels, self.colours)


class ControlNetPair(nn.Module):
    """Base U-Net + ControlNet + class prompt, trained by the shared trainer as one module."""

    def __init__(self, prompt: ClassListPrompt, unet: UNet2DConditionModel, controlnet: ControlNetModel):
        super().__init__()
        self.prompt, self.unet, self.controlnet = prompt, unet, controlnet
        self.use_control = False

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def forward(self, x_t, t, labels, scale: float = 1.0, drop_text: bool | torch.Tensor = False):
        """``drop_text``: the empty class list (the null of classifier-free guidance), for the whole batch
        (True) or per sample (a [B] bool tensor, training's text dropout); the map still steers."""
        text = self.prompt(labels).to(x_t.dtype)
        if torch.is_tensor(drop_text):
            text = text * (~drop_text).to(text).view(-1, 1, 1)
        elif drop_text:
            text = torch.zeros_like(text)
        if not self.use_control:
            return self.unet(x_t, t, encoder_hidden_states=text).sample
        down, mid = self.controlnet(x_t, t, encoder_hidden_states=text, controlnet_cond=self.prompt.control_image(labels),
                                    conditioning_scale=scale, return_dict=False)
        return self.unet(x_t, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample


class ControlNetPixelPipeline(DiffusionPipeline):
    """Maps in, images out, with the ControlNet steering the frozen base at every step."""

    def __init__(self, prompt, unet, controlnet, scheduler):
        super().__init__()
        self.register_modules(prompt=prompt, unet=unet, controlnet=controlnet, scheduler=scheduler)
        self.conditioning_scale = 1.0

    @torch.no_grad()
    def __call__(self, segmap: torch.Tensor, num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 generator=None, output_type: str = "pt", return_dict: bool = True):
        if segmap.dim() != 3:
            raise ValueError("ControlNetPixelPipeline takes [B, H, W] class-id maps")
        pair = ControlNetPair(self.prompt, self.unet, self.controlnet)
        pair.use_control = True
        labels = segmap.to(self.device)
        b, h, w = labels.shape
        x = randn_tensor((b, self.unet.config.in_channels, h, w), generator=generator, device=self.device,
                         dtype=self.unet.dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = self.scheduler.scale_model_input(x, t)
            eps = pair(inp, t, labels, self.conditioning_scale)
            if guidance_scale != 1.0:  # classifier-free on the class list: the empty prompt is the null
                null = pair(inp, t, labels, self.conditioning_scale, drop_text=True)
                eps = null + guidance_scale * (eps - null)
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        image = (x.float() / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = self.numpy_to_pil(image.permute(0, 2, 3, 1).cpu().numpy())
        return ImagePipelineOutput(images=image) if return_dict else (image,)


def base_unet(preset, resolution: int, cross_dim: int) -> UNet2DConditionModel:
    """A pixel-space conditional U-Net sized by the same preset as the SPADE U-Net."""
    channels = tuple(preset.base_channels * m for m in preset.channel_mult)
    res, down, up = resolution, [], []
    for _ in channels:
        down.append("CrossAttnDownBlock2D" if res in preset.attention_resolutions else "DownBlock2D")
        res //= 2
    up = ["CrossAttnUpBlock2D" if d.startswith("CrossAttn") else "UpBlock2D" for d in reversed(down)]
    return UNet2DConditionModel(sample_size=resolution, in_channels=3, out_channels=3, block_out_channels=channels,
                                layers_per_block=preset.num_res_blocks, down_block_types=tuple(down),
                                up_block_types=tuple(up), cross_attention_dim=cross_dim,
                                attention_head_dim=max(1, channels[-1] // preset.head_channels),
                                norm_num_groups=groups_for(channels[0]))


@register("controlnet")
class ControlNetKind(ModelKind):
    losses = ("controlnet",)
    Options = ControlNetOptions
    find_unused_parameters = True  # each phase leaves one of the two networks out of the graph

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        if self.options.pretrained is not None:
            raise ValueError(f"params.yaml: models.{self.name}.training.pretrained: the latent route is "
                             "kind 'controlnet-sd' (baselines/controlnet_sd.py); set kind: controlnet-sd")
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
        sched, b, g = self.noise_scheduler, images.shape[0], as_draws(g)
        drop = False
        if self.options.drop_rate > 0:  # text dropout: the null of classifier-free guidance gets trained
            drop = (g.rand((b,)) < self.options.drop_rate).to(images.device)
        d = self.ctx.diffusion
        noise = draw_noise(tuple(images.shape), g, d.offset_noise).to(images.device)
        t = g.randint(sched.config.num_train_timesteps, (b,)).to(images.device)
        with accelerator.autocast():
            out = model(sched.add_noise(images, noise, t), t, labels, drop_text=drop)
        name = "controlnet_mse" if accelerator.unwrap_model(model).use_control else "base_mse"
        terms = {name: mse(out, training_target(sched, images, noise, t),
                           sample_weights=timestep_weights(sched, t, d.snr_gamma))}
        return terms[name], terms

    def pipeline(self, model: ControlNetPair) -> ControlNetPixelPipeline:
        pipe = ControlNetPixelPipeline(model.prompt, model.unet, model.controlnet,
                                       make_scheduler(self.sampling.scheduler, self.ctx.diffusion))
        pipe.conditioning_scale = self.options.conditioning_scale
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def export_raw(self, model: ControlNetPair, folder: Path) -> None:
        for part in ("prompt", "unet", "controlnet"):
            getattr(model, part).save_pretrained(folder / f"{part}_raw")

    def load_model(self, folder: Path, suffix: str) -> ControlNetPair:
        return ControlNetPair(ClassListPrompt.from_pretrained(folder / f"prompt{suffix}"),
                              UNet2DConditionModel.from_pretrained(folder / f"unet{suffix}"),
                              ControlNetModel.from_pretrained(folder / f"controlnet{suffix}"))
