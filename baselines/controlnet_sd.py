"""ControlNet on a pretrained Stable Diffusion checkpoint (the paper-scale, GPU route).

``training.pretrained`` is a local diffusers folder (``unet/ vae/ text_encoder/ tokenizer/
scheduler/``). Images are encoded by its VAE, prompts ("liver, fat, grasper") by its CLIP text
encoder, and only a ControlNet copied from its U-Net is trained, the control image being the
colour-coded map at image resolution. Training noise, target and sampler follow the checkpoint's
``scheduler/`` config (its betas and prediction type), not params.yaml's ``diffusion:``, which
describes the pixel-space models. Nothing is downloaded: a missing folder is an error naming it.
The networks and the sampler call live here; the harness's adapter is ``benchmark/kinds/controlnet_sd.py``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from baselines.controlnet import colour_map

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class SDControlNet(nn.Module):
    """Frozen Stable Diffusion parts + the trainable ControlNet."""

    def __init__(self, root: Path, colours):
        super().__init__()
        self.vae = AutoencoderKL.from_pretrained(root / "vae")
        self.text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder")
        self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        self.unet = UNet2DConditionModel.from_pretrained(root / "unet")
        for m in (self.vae, self.text_encoder, self.unet):
            m.requires_grad_(False)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.controlnet = ControlNetModel.from_unet(
            self.unet, conditioning_embedding_out_channels=tuple(16 * 2**i for i in range(int(math.log2(factor)) + 1)))
        self.register_buffer("colours", torch.tensor(colours, dtype=torch.float32) / 255.0)
        self.class_names: list[str] = []

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def prompts(self, labels: torch.Tensor) -> list[str]:
        return [", ".join(n.lower() for c, n in enumerate(self.class_names) if (lab == c).any()) for lab in labels]

    def control_image(self, labels: torch.Tensor) -> torch.Tensor:
        return colour_map(labels, self.colours)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                             max_length=self.tokenizer.model_max_length).input_ids.to(self.device)
        return self.text_encoder(ids)[0]


class MapToImage:
    """The shared sampler call (class-id maps in, images in [0, 1] out) over diffusers' SD ControlNet pipeline."""

    def __init__(self, pipe: StableDiffusionControlNetPipeline, model: SDControlNet, scale: float):
        self.pipe, self.model, self.scale = pipe, model, scale

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def __call__(self, segmap, num_inference_steps=50, guidance_scale=1.0, generator=None, output_type="pt"):
        labels = segmap.to(self.device)
        images = self.pipe(prompt=self.model.prompts(labels), image=self.model.control_image(labels),
                           num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           generator=generator, height=labels.shape[1], width=labels.shape[2],
                           controlnet_conditioning_scale=self.scale, output_type="pt").images
        # the VAE decodes in bf16 under sample.mixed_precision: images leave as float32, like every kind's
        return type("Out", (), {"images": images.float()})()

    def save_pretrained(self, folder: Path) -> None:
        self.pipe.controlnet.save_pretrained(Path(folder) / "controlnet")
