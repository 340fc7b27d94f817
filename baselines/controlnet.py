"""ControlNet (Zhang et al. 2023), pixel space: diffusers' ``ControlNetModel`` beside a
``UNet2DConditionModel``; control image = the colour-coded map, text = the classes present.

CPU / offline route (``options.pretrained: null``), in pixel space, the ControlNet recipe in one run:
the base U-Net is first trained with the class-list condition alone (``base_fraction`` of the
steps), then a ControlNet copied from it is trained with the base frozen. The class list is one token
per class: its text embedding (``text_encoder``: ``minilm`` offline, ``clip:<path>``, or ``learned``)
where the class is present, zeros where it is absent.

Paper-scale route (``options.pretrained: /path/to/stable-diffusion``) lives in
``controlnet_sd.py``: latent space through the checkpoint's VAE, CLIP prompts, ControlNet only.
The models and the pipeline live here; the harness's adapters are ``benchmark/kinds/controlnet*.py``.
"""
from __future__ import annotations

import torch
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    ImagePipelineOutput,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from casdm.pipeline import sampler_settings
from casdm.schedulers import clamp_terminal
from casdm.unet import groups_for

COND_CHANNELS = (16,)  # pixel space: the control image already has the sample's size, no down-sampling


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

    def __init__(self, prompt, unet, controlnet, scheduler, num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 conditioning_scale: float = 1.0):
        """The sampler the model was benchmarked with (steps, guidance, ControlNet scale) goes into
        model_index.json: ``pipe(segmap)`` after ``from_pretrained`` samples as the benchmark did."""
        super().__init__()
        self.register_modules(prompt=prompt, unet=unet, controlnet=controlnet, scheduler=clamp_terminal(scheduler))
        self.register_to_config(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                conditioning_scale=conditioning_scale)

    @property
    def conditioning_scale(self) -> float:
        return self.config.conditioning_scale

    @torch.no_grad()
    def __call__(self, segmap: torch.Tensor, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator=None, output_type: str = "pt", return_dict: bool = True):
        num_inference_steps, guidance_scale = sampler_settings(self.config, num_inference_steps, guidance_scale)
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
