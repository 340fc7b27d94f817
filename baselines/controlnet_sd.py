"""ControlNet on a pretrained Stable Diffusion checkpoint (the paper-scale, GPU route).

``training.pretrained`` is a local diffusers folder (``unet/ vae/ text_encoder/ tokenizer/
scheduler/``). Images are encoded by its VAE, prompts ("liver, fat, grasper") by its CLIP text
encoder, and only a ControlNet copied from its U-Net is trained, the control image being the
colour-coded map at image resolution. Training noise, target and sampler follow the checkpoint's
``scheduler/`` config (its betas and prediction type), not params.yaml's ``diffusion:``, which
describes the pixel-space models. Nothing is downloaded: a missing folder is an error naming it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, StableDiffusionControlNetPipeline, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from baselines.controlnet import ControlNetOptions, colour_map
from benchmark.engine.kind import ModelKind
from benchmark.engine.registry import register
from casdm.draws import as_draws
from casdm.losses import draw_noise, mse, timestep_weights, training_target
from casdm.schedulers import scheduler_like

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


@register("controlnet-sd")
class ControlNetSDKind(ModelKind):
    losses = ("controlnet",)
    Options = ControlNetOptions

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        key = f"params.yaml: models.{self.name}.training.pretrained"
        if not self.options.pretrained:
            raise ValueError(f"{key}: required for kind 'controlnet-sd' (a local Stable Diffusion folder)")
        self.root = Path(self.options.pretrained)
        missing = [p for p in PARTS if not (self.root / p).is_dir()]
        if missing:
            raise ValueError(f"{key}: {self.root} lacks {missing}; expected a diffusers Stable Diffusion folder "
                             f"with {list(PARTS)}")
        # the checkpoint's own schedule and prediction type (SD 1.x: scaled_linear 0.00085..0.012, epsilon;
        # SD 2.x: v-prediction): training and sampling on params.yaml's diffusion: would not match its U-Net
        self.noise_scheduler = DDPMScheduler.from_pretrained(self.root / "scheduler")

    def build(self) -> SDControlNet:
        model = SDControlNet(self.root, self.table.palette()[: self.table.num_classes].tolist())
        model.class_names = self.table.names
        return model

    def loss(self, model, images, labels, g, accelerator):
        m, g = accelerator.unwrap_model(model), as_draws(g)
        with torch.no_grad():
            dist = m.vae.encode(images.to(m.vae.dtype)).latent_dist  # sampled from g: one slice of the global batch
            latent = dist.mean + dist.std * g.randn(tuple(dist.mean.shape)).to(dist.mean)
            latents = latent * m.vae.config.scaling_factor
            text = m.encode_text(m.prompts(labels))
        sched, b = self.noise_scheduler, images.shape[0]
        d = self.ctx.diffusion  # the timestep weighting and offset noise of every model; the schedule is the checkpoint's
        noise = draw_noise(tuple(latents.shape), g, d.offset_noise).to(latents)
        t = g.randint(sched.config.num_train_timesteps, (b,)).to(latents.device)
        noisy = sched.add_noise(latents, noise, t)
        with accelerator.autocast():
            down, mid = m.controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=m.control_image(labels),
                                     conditioning_scale=self.options.conditioning_scale, return_dict=False)
            eps = m.unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        terms = {"controlnet_mse": mse(eps, training_target(sched, latents, noise, t),
                                       sample_weights=timestep_weights(sched, t, d.snr_gamma))}
        return terms["controlnet_mse"], terms

    def pipeline(self, model: SDControlNet) -> MapToImage:
        pipe = StableDiffusionControlNetPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
            controlnet=model.controlnet, scheduler=scheduler_like(self.sampling.scheduler, self.noise_scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return MapToImage(pipe, model, self.options.conditioning_scale)

    def export(self, model, folder: Path) -> None:
        self.pipeline(model).save_pretrained(folder)
        (Path(folder) / "model_index.json").write_text(json.dumps({"pretrained": str(self.root.resolve()),
                                                                   "controlnet": "controlnet"}, indent=2))

    def load_model(self, folder: Path, suffix: str) -> SDControlNet:
        model = self.build()
        model.controlnet = ControlNetModel.from_pretrained(folder / f"controlnet{suffix}")
        return model

    def export_raw(self, model, folder: Path) -> None:
        model.controlnet.save_pretrained(Path(folder) / "controlnet_raw")
