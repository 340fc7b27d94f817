"""CASDM's kind: the SPADE U-Net trained with ``mse``, ``ca_mse`` or ``ca_mse+ca_sp`` (the method).

The three losses are the ablation ladder: the same network, data, steps, seed and sampler, so the
differences between them are the loss. ``SpadeKind`` is what every SPADE-U-Net kind shares (SDM in
``baselines/sdm.py`` is one too): building the network, one noisy forward pass, sampling.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from benchmark.engine.kind import KindOptions, ModelKind
from benchmark.engine.registry import register
from benchmark.seeds import CA_SP_NOISE
from casdm.draws import as_draws
from casdm.labels import IGNORE_INDEX
from casdm.losses import (ca_mse, ca_sp, class_pixel_weights, draw_noise, frozen_copy, mse, predict_x0,
                          timestep_weights, training_target)
from casdm.pipeline import CASDMPipeline, to_onehot
from casdm.schedulers import make_scheduler
from casdm.unet import SPADEUNet, unet_from_preset


class SpadeOptions(KindOptions):
    drop_rate: float = Field(ge=0, le=1, description="null-map dropout for classifier-free guidance")


class CASDMOptions(SpadeOptions):
    """CA-MSE (casdm.md section 2) and CA-SP (section 3) settings."""

    ca_variant: Literal["paper", "balanced"]
    ca_alpha: float = Field(ge=0, le=2, description="class weight ~ n^-alpha (1 = the paper)")
    ca_boost: dict[str, float] = Field(description="class name -> weight multiplier")
    lambda_sp: float = Field(ge=0)
    sp_start_step: int = Field(ge=0, description="stage 2: the frozen copy is taken and CA-SP switched on")
    sp_levels: int = Field(ge=1, le=8, description="feature levels compared: the middle block, then decoder")


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

    def noisy_batch(self, model, images, labels, g, accelerator):
        """Map dropout, noise, timesteps, one forward pass: what every SPADE-U-Net loss starts from."""
        sched, b, g = self.noise_scheduler, images.shape[0], as_draws(g)
        onehot = to_onehot(labels, self.table.num_classes)
        cond = onehot
        if self.options.drop_rate > 0:  # classifier-free guidance: the whole map zeroed
            keep = (g.rand((b,)) >= self.options.drop_rate).float().to(images.device)
            cond = onehot * keep.view(-1, 1, 1, 1)
        d = self.ctx.diffusion
        noise = draw_noise(tuple(images.shape), g, d.offset_noise).to(images.device)
        t = g.randint(sched.config.num_train_timesteps, (b,)).to(images.device)
        x_t = sched.add_noise(images, noise, t)
        target = training_target(sched, images, noise, t)
        with accelerator.autocast():
            # a tuple: accelerate's fp32 cast of a mixed-precision model's output rebuilds a BaseOutput
            # whose second field is None as SPADEUNetOutput(sample={...}), so .sample would be a dict
            out = model(x_t, t, cond, return_dict=False)[0]
        return dict(onehot=onehot, cond=cond, noise=noise, t=t, x_t=x_t, target=target, out=out,
                    sample_weights=timestep_weights(sched, t, d.snr_gamma))

    def pipeline(self, model) -> CASDMPipeline:
        s = self.sampling
        pipe = CASDMPipeline(model, make_scheduler(s.scheduler, self.ctx.diffusion, model.config.learn_sigma))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_model(self, folder: Path, suffix: str) -> SPADEUNet:
        return SPADEUNet.from_pretrained(folder / f"unet{suffix}")


@register("casdm")
class CASDMKind(SpadeKind):
    """SPADE U-Net; loss ``mse``, ``ca_mse`` or ``ca_mse+ca_sp`` (the method)."""

    losses = ("mse", "ca_mse", "ca_mse+ca_sp")
    Options = CASDMOptions

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.frozen: torch.nn.Module | None = None
        self.boost = self.class_boost()

    def class_boost(self) -> torch.Tensor:
        boost = torch.ones(self.table.num_classes)
        for cname, factor in self.options.ca_boost.items():
            try:
                boost[self.table.index(cname)] = factor
            except KeyError:
                raise ValueError(f"params.yaml: models.{self.name}.training.ca_boost: unknown class {cname!r}; "
                                 f"expected one of {self.table.names}") from None
        return boost

    def on_step(self, step: int, model) -> bool:
        o = self.options
        if o.loss == "ca_mse+ca_sp" and self.frozen is None and step >= o.sp_start_step:
            self.frozen = frozen_copy(model)  # stage 2 starts here
        return False

    def loss(self, model, images, labels, g, accelerator):
        o = self.options
        r = self.noisy_batch(model, images, labels, g, accelerator)
        eps = r["out"][:, : images.shape[1]]
        if o.loss == "mse":
            terms = {"mse": mse(eps, r["target"], ignore=labels == IGNORE_INDEX,
                                 sample_weights=r["sample_weights"])}
            return terms["mse"], terms
        weights = class_pixel_weights(r["onehot"], variant=o.ca_variant, boost=self.boost.to(images.device),
                                      alpha=o.ca_alpha)
        terms = {"ca_mse": ca_mse(eps, r["target"], r["onehot"], weights=weights,
                                   sample_weights=r["sample_weights"])}
        loss = terms["ca_mse"]
        if o.loss == "ca_mse+ca_sp" and self.frozen is not None:
            x0_hat = predict_x0(self.noise_scheduler, r["x_t"], eps, r["t"])
            sp_draws = as_draws(g).spawn(CA_SP_NOISE)  # t', e': a stream of its own
            with accelerator.autocast():
                terms["ca_sp"] = ca_sp(self.frozen, images, x0_hat, r["cond"], weights, self.noise_scheduler,
                                       sp_draws, levels=o.sp_levels)
            loss = loss + o.lambda_sp * terms["ca_sp"]
            # the SP term's share of the loss, logged each step: is stage 2 doing anything?
            terms["sp_ratio"] = (o.lambda_sp * terms["ca_sp"] / terms["ca_mse"].clamp_min(1e-12)).detach()
        return loss, terms

    def save_state(self, folder: Path) -> None:
        if self.frozen is not None:
            torch.save(self.frozen.state_dict(), folder / "frozen.pt")

    def load_state(self, folder: Path, model) -> None:
        if (folder / "frozen.pt").exists():
            self.frozen = frozen_copy(model)
            self.frozen.load_state_dict(torch.load(folder / "frozen.pt", map_location=model.device))
