"""SDM's kind: the SPADE U-Net with a learned variance, trained by ``baselines.sdm.hybrid_loss``.

SDM's recipe (Wang et al. 2022; the released scripts) trains in two stages: the map always given, then a
classifier-free fine-tune that zeroes the whole map with probability ``drop_rate`` (0.2) at a fifth of the
learning rate. One run here does both: ``guidance_fraction`` is the share of the steps, at the end, that is
the fine-tune. The cosine schedule's lr there is already at most ~0.2 of its peak (at 3/4 of a 280-step
run with 50 warm-up steps: 0.21), so the lr drop is not applied a second time.
"""
from __future__ import annotations

from pydantic import Field

from baselines.sdm import hybrid_loss
from benchmark.kinds.spade import SpadeKind, SpadeOptions
from casdm.labels import IGNORE_INDEX


class SDMOptions(SpadeOptions):
    guidance_fraction: float = Field(ge=0, le=1, description="the last share of the steps that drops the map at "
                                     "drop_rate (SDM's classifier-free fine-tune); 1 drops it from step 0")


class SDMKind(SpadeKind):
    """SPADE U-Net with learned variance, hybrid loss, map dropout in a final guidance phase."""

    losses = ("hybrid",)
    learned_variance = True
    Options = SDMOptions

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        # the first step (0-based, as the trainer counts) of the guidance phase
        self.guidance_start = ctx.steps - round(ctx.steps * options.guidance_fraction)
        self.dropping = False

    def on_step(self, step: int, model) -> bool:
        self.dropping = step >= self.guidance_start
        return False

    def conditioned_steps(self, steps: int) -> int:
        """Steps' worth of map-conditioned images: the guidance phase drops ``drop_rate`` of its maps."""
        phase = max(0, steps - self.guidance_start)
        return steps - round(phase * self.options.drop_rate)

    def drop_rate(self) -> float:
        return self.options.drop_rate if self.dropping else 0.0

    def loss(self, model, images, labels, g, accelerator):
        r = self.forward(model, images, labels, g, accelerator)
        nb = r.noised
        terms = hybrid_loss(self.noise_scheduler, r.out, nb.target, images, nb.x_t, nb.t, nb.sample_weights,
                            ignore=labels == IGNORE_INDEX)
        return terms["mse"] + terms["vb"], terms
