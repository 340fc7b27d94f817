"""What every SPADE-U-Net kind shares (CASDM and its ablations, SDM): building the network from the
preset, the training noise schedule, sampling through ``CASDMPipeline``."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from benchmark.kinds.base import KindOptions, ModelKind
from casdm.objective import SpadeForward, spade_forward
from casdm.pipeline import CASDMPipeline
from casdm.schedulers import make_scheduler
from casdm.unet import SPADEUNet, unet_from_preset


class SpadeOptions(KindOptions):
    drop_rate: float = Field(ge=0, le=1, description="null-map dropout for classifier-free guidance")


class SpadeKind(ModelKind):
    """The SPADE U-Net (SDM design) on the shared trainer; subclasses define the loss."""

    Options: ClassVar[type[SpadeOptions]] = SpadeOptions
    learned_variance: ClassVar[bool] = False

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.noise_scheduler = make_scheduler("ddpm", ctx.diffusion, learned_variance=self.learned_variance)

    def build(self) -> SPADEUNet:
        return unet_from_preset(self.ctx.preset, self.ctx.resolution, self.table.num_classes,
                                learn_sigma=self.learned_variance)

    def drop_rate(self) -> float:
        """The null-map dropout of the current step (a kind whose recipe has phases overrides it)."""
        return self.options.drop_rate

    def forward(self, model, images, labels, g, accelerator) -> SpadeForward:
        """Map dropout, noise, timesteps, one forward pass (``casdm.objective.spade_forward``)."""
        d = self.ctx.diffusion
        return spade_forward(model, self.noise_scheduler, images, labels, self.table.num_classes, g,
                             drop_rate=self.drop_rate(), offset_noise=d.offset_noise, snr_gamma=d.snr_gamma,
                             autocast=accelerator.autocast)

    def pipeline(self, model) -> CASDMPipeline:
        s = self.sampling
        pipe = CASDMPipeline(model, make_scheduler(s.scheduler, self.ctx.diffusion, model.config.learn_sigma, sampling=True),
                             num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_model(self, folder: Path, suffix: str) -> SPADEUNet:
        return SPADEUNet.from_pretrained(folder / f"unet{suffix}")
