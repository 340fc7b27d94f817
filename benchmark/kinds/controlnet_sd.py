"""ControlNet on a pretrained Stable Diffusion checkpoint (the paper-scale, GPU route): the kind over
``baselines.controlnet_sd``'s networks. Training noise, target and sampler follow the checkpoint's
``scheduler/`` config, not params.yaml's ``diffusion:`` (which describes the pixel-space models).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler

from baselines.controlnet_sd import PARTS, MapToImage, SDControlNet, sd_pipeline
from benchmark.kinds.base import ModelKind
from benchmark.kinds.controlnet import ControlNetOptions
from casdm.draws import as_draws
from casdm.labels import IGNORE_INDEX
from casdm.losses import mse
from casdm.objective import noised_batch
from casdm.schedulers import scheduler_like


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
        d = self.ctx.diffusion  # the timestep weighting and offset noise of every model; the schedule is the checkpoint's
        nb = noised_batch(self.noise_scheduler, latents, g, offset_noise=d.offset_noise, snr_gamma=d.snr_gamma)
        with accelerator.autocast():
            down, mid = m.controlnet(nb.x_t, nb.t, encoder_hidden_states=text, controlnet_cond=m.control_image(labels),
                                     conditioning_scale=self.options.conditioning_scale, return_dict=False)
            eps = m.unet(nb.x_t, nb.t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        # a latent cell holding any ignore pixel is left out, as ignore pixels are by every model's loss
        ignore = F.adaptive_max_pool2d((labels == IGNORE_INDEX).float().unsqueeze(1), eps.shape[-2:])[:, 0] > 0
        terms = {"controlnet_mse": mse(eps, nb.target, ignore=ignore, sample_weights=nb.sample_weights)}
        return terms["controlnet_mse"], terms

    def pipeline(self, model: SDControlNet) -> MapToImage:
        pipe = sd_pipeline(model, scheduler_like(self.sampling.scheduler, self.noise_scheduler.config))
        return MapToImage(pipe, model, self.options.conditioning_scale, self.sampling.num_inference_steps,
                          self.sampling.guidance_scale)

    def export(self, model, folder: Path) -> None:
        self.pipeline(model).save_pretrained(folder)  # controlnet/, scheduler/, model_index.json

    def load_model(self, folder: Path, suffix: str) -> SDControlNet:
        model = self.build()
        model.controlnet = ControlNetModel.from_pretrained(folder / f"controlnet{suffix}")
        return model

    def export_raw(self, model, folder: Path) -> None:
        model.controlnet.save_pretrained(Path(folder) / "controlnet_raw")
