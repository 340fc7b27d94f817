"""SDM's kind: the SPADE U-Net with a learned variance, trained by ``baselines.sdm.hybrid_loss``."""
from __future__ import annotations

from baselines.sdm import hybrid_loss
from benchmark.kinds.spade import SpadeKind
from casdm.labels import IGNORE_INDEX


class SDMKind(SpadeKind):
    """SPADE U-Net with learned variance, hybrid loss, map dropout and guidance."""

    losses = ("hybrid",)
    learned_variance = True

    def loss(self, model, images, labels, g, accelerator):
        r = self.forward(model, images, labels, g, accelerator)
        nb = r.noised
        terms = hybrid_loss(self.noise_scheduler, r.out, nb.target, images, nb.x_t, nb.t, nb.sample_weights,
                            ignore=labels == IGNORE_INDEX)
        return terms["mse"] + terms["vb"], terms
