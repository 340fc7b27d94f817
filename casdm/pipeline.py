"""CASDMPipeline: segmentation maps in, images out; a thin loop over a model and a scheduler.

Unlike diffusers' DDIMPipeline (which turns any scheduler into DDIM, which is how the authors'
DPM-Solver settings were lost), the pipeline keeps the scheduler it is given.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

import casdm.unet  # noqa: F401 - model_index.json names casdm.unet; diffusers loads only from modules imported
from casdm.labels import IGNORE_INDEX
from casdm.schedulers import clamp_terminal


def to_onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, H, W] class ids (IGNORE_INDEX allowed) -> [B, K, H, W] float one-hot; ignore pixels all-zero."""
    valid = labels != IGNORE_INDEX
    oh = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).permute(0, 3, 1, 2).float()
    return oh * valid.unsqueeze(1)


def sampler_settings(config, num_inference_steps: int | None, guidance_scale: float | None) -> tuple[int, float]:
    """The steps and guidance a call asked for, else the ones the pipeline was saved with."""
    return (config.num_inference_steps if num_inference_steps is None else num_inference_steps,
            config.guidance_scale if guidance_scale is None else guidance_scale)


class CASDMPipeline(DiffusionPipeline):
    """Map-conditioned sampling with classifier-free guidance (conditional and null halves in one batch)."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, num_inference_steps: int = 50, guidance_scale: float = 1.0):
        """``num_inference_steps`` and ``guidance_scale`` are the sampler the model was benchmarked with:
        saved in model_index.json, so ``pipe(segmap)`` after ``from_pretrained`` samples as the benchmark did."""
        super().__init__()
        self.register_modules(unet=unet, scheduler=clamp_terminal(scheduler))
        self.register_to_config(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)

    @torch.no_grad()
    def __call__(self, segmap: torch.Tensor, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", spade_reuse: bool = True, classifier_free: bool | None = None,
                 return_dict: bool = True):
        """``segmap``: [B, H, W] class ids or [B, K, H, W] one-hot. Guidance s gives
        eps(null) + s * (eps(map) - eps(null)), the null map being all zeros; ``classifier_free``
        defaults to ``guidance_scale != 1`` (at s = 1 the single conditional pass is the same thing).
        Steps and guidance left out: the saved sampler's (``self.config``)."""
        num_inference_steps, guidance_scale = sampler_settings(self.config, num_inference_steps, guidance_scale)
        unet = self.unet
        if segmap.dim() == 3:
            segmap = to_onehot(segmap, unet.config.num_classes)
        if segmap.shape[1] != unet.config.num_classes:
            raise ValueError(f"segmap has {segmap.shape[1]} classes; the model expects {unet.config.num_classes}")
        segmap = segmap.to(self.device, unet.dtype)
        b, _, h, w = segmap.shape
        x = randn_tensor((b, unet.config.in_channels, h, w), generator=generator, device=self.device,
                         dtype=unet.dtype)
        x = x * self.scheduler.init_noise_sigma
        guided = guidance_scale != 1.0 if classifier_free is None else classifier_free
        cond = torch.cat([torch.zeros_like(segmap), segmap]) if guided else segmap
        if spade_reuse:  # the SPADE branches see only the map: compute them once for all steps
            cond = unet.spade_cache(cond)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        c = unet.config.in_channels
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = torch.cat([x, x]) if guided else x
            out = unet(self.scheduler.scale_model_input(inp, t), t, cond, return_dict=False)[0]
            if guided:
                null, full = out.chunk(2)
                eps = null[:, :c] + guidance_scale * (full[:, :c] - null[:, :c])
                out = torch.cat([eps, full[:, c:]], dim=1)
            if out.shape[1] > c and getattr(self.scheduler.config, "variance_type", None) != "learned_range":
                out = out[:, :c]  # learned variance is only used by samplers that understand it
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
        image = (x.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            images = image
        else:
            images = image.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] (tensor) or [B, H, W, 3] (array) -> [B, H, W, 3] uint8."""
    if torch.is_tensor(images):
        images = images.permute(0, 2, 3, 1).cpu().numpy()
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
