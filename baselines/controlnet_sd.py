"""ControlNet on a pretrained Stable Diffusion checkpoint (the paper-scale, GPU route).

``training.pretrained`` is a local diffusers folder (``unet/ vae/ text_encoder/ tokenizer/
scheduler/``). Images are encoded by its VAE, prompts ("liver, fat, grasper") by its CLIP text
encoder, and only a ControlNet copied from its U-Net is trained, the control image being the
colour-coded map at image resolution. Training noise, target and sampler follow the checkpoint's
``scheduler/`` config (its betas and prediction type), not params.yaml's ``diffusion:``, which
describes the pixel-space models. Nothing is downloaded: a missing folder is an error naming it.
The networks and the sampler call live here; the harness's adapter is ``benchmark/kinds/controlnet_sd.py``.

A trained folder holds only what training made (``controlnet/``) and how it was sampled
(``scheduler/``, ``model_index.json``: the checkpoint's path, the class names and colours that make the
prompt and control image, steps, guidance, conditioning scale); the Stable Diffusion parts stay in the
user's checkpoint (GBs at paper scale). ``MapToImage.from_pretrained(folder)`` loads it cold with
diffusers' own loaders.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import diffusers
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

    def __init__(self, root: Path, colours, controlnet: ControlNetModel | None = None):
        super().__init__()
        self.vae = AutoencoderKL.from_pretrained(root / "vae")
        self.text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder")
        self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        self.unet = UNet2DConditionModel.from_pretrained(root / "unet")
        for m in (self.vae, self.text_encoder, self.unet):
            m.requires_grad_(False)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.controlnet = controlnet or ControlNetModel.from_unet(
            self.unet, conditioning_embedding_out_channels=tuple(16 * 2**i for i in range(int(math.log2(factor)) + 1)))
        self.root = Path(root)
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
    """The shared sampler call (class-id maps in, images in [0, 1] out) over diffusers' SD ControlNet pipeline.
    It keeps the steps and guidance it is benchmarked with, so ``pipe(segmap)`` samples as the sample stage
    did; explicit arguments override them."""

    def __init__(self, pipe: StableDiffusionControlNetPipeline, model: SDControlNet, scale: float,
                 num_inference_steps: int = 50, guidance_scale: float = 1.0):
        self.pipe, self.model, self.scale = pipe, model, scale
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def __call__(self, segmap, num_inference_steps=None, guidance_scale=None, generator=None, output_type="pt"):
        labels = segmap.to(self.device)
        images = self.pipe(prompt=self.model.prompts(labels), image=self.model.control_image(labels),
                           num_inference_steps=num_inference_steps or self.num_inference_steps,
                           guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale,
                           generator=generator, height=labels.shape[1], width=labels.shape[2],
                           controlnet_conditioning_scale=self.scale, output_type="pt").images
        # the VAE decodes in bf16 under sample.mixed_precision: images leave as float32, like every kind's
        return type("Out", (), {"images": images.float()})()

    def save_pretrained(self, folder: Path) -> None:
        folder = Path(folder)
        self.pipe.controlnet.save_pretrained(folder / "controlnet")
        self.pipe.scheduler.save_pretrained(folder / "scheduler")
        colours = (self.model.colours * 255).round().int().tolist()
        (folder / "model_index.json").write_text(json.dumps({
            "pretrained": str(Path(self.model.root).resolve()), "controlnet": "controlnet", "scheduler": "scheduler",
            "class_names": self.model.class_names, "colours": colours, "conditioning_scale": self.scale,
            "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: Path, pretrained: Path | None = None, controlnet: str = "controlnet") -> "MapToImage":
        """A trained folder, cold: its ControlNet and sampler on the Stable Diffusion checkpoint it was trained
        on (``pretrained`` overrides the recorded path, e.g. on another machine)."""
        folder = Path(folder)
        index = json.loads((folder / "model_index.json").read_text())
        root = Path(pretrained or index["pretrained"])
        if not root.is_dir():
            raise FileNotFoundError(f"{folder}/model_index.json: Stable Diffusion checkpoint {root} not found; "
                                    "pass pretrained= the local folder it was trained on")
        model = SDControlNet(root, index["colours"], ControlNetModel.from_pretrained(folder / controlnet))
        model.class_names = index["class_names"]
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        scheduler = getattr(diffusers, config["_class_name"]).from_pretrained(folder / "scheduler")
        return cls(sd_pipeline(model, scheduler), model, index["conditioning_scale"], index["num_inference_steps"],
                   index["guidance_scale"])


def sd_pipeline(model: SDControlNet, scheduler) -> StableDiffusionControlNetPipeline:
    """diffusers' pipeline over the model's parts (no safety checker: the images are surgical scenes)."""
    pipe = StableDiffusionControlNetPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        controlnet=model.controlnet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
