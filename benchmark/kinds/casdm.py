"""CASDM's kind: the SPADE U-Net trained by ``casdm.objective.CASDMObjective`` with loss ``mse``,
``ca_mse`` or ``ca_mse+ca_sp`` (the method).

The three losses are the ablation ladder: the same network, data, steps, seed and sampler, so the
differences between them are the loss. This file only maps params.yaml's ``training:`` block onto
the objective and its frozen copy onto the trainer's checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from benchmark.kinds.spade import SpadeKind, SpadeOptions
from casdm.objective import LOSSES, CASDMObjective, class_boost


class CASDMOptions(SpadeOptions):
    """CA-MSE (casdm.md section 2) and CA-SP (section 3) settings."""

    ca_variant: Literal["paper", "balanced"]
    ca_alpha: float = Field(ge=0, le=2, description="class weight ~ n^-alpha (1 = the paper)")
    ca_boost: dict[str, Annotated[float, Field(gt=0, le=100)]] = Field(
        description="class name -> weight multiplier (0 < factor <= 100; the names are checked against the dataset's)")
    lambda_sp: float = Field(ge=0)
    sp_start_step: int = Field(ge=0, description="stage 2: the frozen copy is taken and CA-SP switched on")
    sp_levels: int = Field(ge=1, le=8, description="feature levels compared: the middle block, then decoder")


class CASDMKind(SpadeKind):
    """SPADE U-Net; loss ``mse``, ``ca_mse`` or ``ca_mse+ca_sp`` (the method)."""

    losses = LOSSES
    Options = CASDMOptions

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        o, d = self.options, ctx.diffusion
        try:
            boost = class_boost(self.table.names, o.ca_boost)
        except ValueError as exc:
            raise ValueError(f"params.yaml: models.{self.name}.training.ca_boost: {exc}") from None
        self.objective = CASDMObjective(
            self.noise_scheduler, self.table.num_classes, loss=o.loss, ca_variant=o.ca_variant, ca_alpha=o.ca_alpha,
            boost=boost, lambda_sp=o.lambda_sp, sp_start_step=o.sp_start_step, sp_levels=o.sp_levels,
            drop_rate=o.drop_rate, offset_noise=d.offset_noise, snr_gamma=d.snr_gamma)

    @property
    def frozen(self) -> torch.nn.Module | None:
        """The frozen copy f* of stage 2 (None before ``sp_start_step``)."""
        return self.objective.frozen

    def on_step(self, step: int, model) -> bool:
        self.objective.start_step(step, model)
        return False

    def loss(self, model, images, labels, g, accelerator):
        return self.objective(model, images, labels, g, autocast=accelerator.autocast)

    def save_state(self, folder: Path) -> None:
        state = self.objective.frozen_state()
        if state is not None:
            torch.save(state, folder / "frozen.pt")

    def load_state(self, folder: Path, model) -> None:
        if (folder / "frozen.pt").exists():
            self.objective.load_frozen_state(torch.load(folder / "frozen.pt", map_location=model.device, weights_only=True), model)
