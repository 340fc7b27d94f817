"""CASDM's training objective as one object a training loop calls (casdm.md sections 2-3).

Stage 1 trains the denoiser with class-aware MSE. From ``sp_start_step`` on (stage 2) a frozen copy
of the denoiser is taken once, and the loss becomes CA-MSE + lambda_SP * CA-SP, where CA-SP compares
the frozen copy's features of the re-noised real and predicted clean images, weighted by class. The
two ablations are the same object with ``loss="mse"`` or ``loss="ca_mse"``.

``noised_batch`` is the preamble every denoising loss shares (noise -> t -> x_t -> target ->
timestep weights); the baselines call it too, so the draws come in one order for every model.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from casdm.draws import BatchDraws, as_draws
from casdm.labels import IGNORE_INDEX
from casdm.losses import (
    ca_mse,
    ca_sp,
    class_pixel_weights,
    draw_noise,
    frozen_copy,
    mse,
    predict_x0,
    timestep_weights,
    training_target,
)
from casdm.pipeline import to_onehot

LOSSES = ("mse", "ca_mse", "ca_mse+ca_sp")  # the ablation ladder, first rung to the method
CA_SP_NOISE = 1 << 40  # seed offset of a step's CA-SP draws (t', e'): never another step's training noise


@dataclass(frozen=True)
class NoisedBatch:
    """One training batch noised at random timesteps, and what the network must learn to output."""

    noise: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    target: torch.Tensor  # noise (epsilon) or velocity, per the scheduler's prediction type
    sample_weights: torch.Tensor | None  # min-SNR-gamma weight per image; None: the loss as published


def noised_batch(scheduler, x0: torch.Tensor, draws: BatchDraws | torch.Generator | None, *,
                 offset_noise: float = 0.0, snr_gamma: float | None = None) -> NoisedBatch:
    """Noise (then timesteps) drawn from ``draws`` for ``x0``, the noisy input, the target, the weights."""
    g = as_draws(draws)
    noise = draw_noise(tuple(x0.shape), g, offset_noise).to(x0)
    t = g.randint(scheduler.config.num_train_timesteps, (x0.shape[0],)).to(x0.device)
    return NoisedBatch(noise=noise, t=t, x_t=scheduler.add_noise(x0, noise, t),
                       target=training_target(scheduler, x0, noise, t),
                       sample_weights=timestep_weights(scheduler, t, snr_gamma))


@dataclass(frozen=True)
class SpadeForward:
    """One training forward pass of a SPADE denoiser: the map, the map it saw, the noised batch, its output."""

    onehot: torch.Tensor
    cond: torch.Tensor  # ``onehot`` with dropped maps zeroed (classifier-free guidance)
    noised: NoisedBatch
    out: torch.Tensor


def spade_forward(model, scheduler, images: torch.Tensor, labels: torch.Tensor, num_classes: int, draws, *,
                  drop_rate: float = 0.0, offset_noise: float = 0.0, snr_gamma: float | None = None,
                  autocast: Callable[[], ContextManager] = nullcontext) -> SpadeForward:
    """Map dropout (drawn first), the noised batch, one forward pass: what every SPADE loss starts from."""
    g = as_draws(draws)
    onehot = to_onehot(labels, num_classes)
    cond = onehot
    if drop_rate > 0:  # classifier-free guidance: the whole map zeroed
        keep = (g.rand((images.shape[0],)) >= drop_rate).float().to(images.device)
        cond = onehot * keep.view(-1, 1, 1, 1)
    nb = noised_batch(scheduler, images, g, offset_noise=offset_noise, snr_gamma=snr_gamma)
    with autocast():
        # a tuple: accelerate's fp32 cast of a mixed-precision model's output rebuilds a BaseOutput
        # whose second field is None as SPADEUNetOutput(sample={...}), so .sample would be a dict
        out = model(nb.x_t, nb.t, cond, return_dict=False)[0]
    return SpadeForward(onehot=onehot, cond=cond, noised=nb, out=out)


def class_boost(class_names: list[str], boost: dict[str, float]) -> torch.Tensor:
    """Per-class weight multipliers [K] from ``{class name: factor}`` (every other class 1)."""
    out = torch.ones(len(class_names))
    for name, factor in boost.items():
        if name not in class_names:
            raise ValueError(f"unknown class {name!r}; expected one of {class_names}")
        out[class_names.index(name)] = factor
    return out


class CASDMObjective:
    """The loss of one batch of the SPADE denoiser: ``mse``, ``ca_mse`` or ``ca_mse+ca_sp`` (the method).

    Call ``start_step(step, model)`` before each step (it takes the frozen copy when stage 2 begins),
    then ``objective(model, images, labels, draws)`` for the loss and its named terms.
    """

    def __init__(self, scheduler, num_classes: int, *, loss: str, ca_variant: str = "paper", ca_alpha: float = 1.0,
                 boost: torch.Tensor | None = None, lambda_sp: float = 0.1, sp_start_step: int = 0,
                 sp_levels: int = 1, drop_rate: float = 0.0, offset_noise: float = 0.0,
                 snr_gamma: float | None = None):
        if loss not in LOSSES:
            raise ValueError(f"loss {loss!r}: expected one of {list(LOSSES)}")
        self.scheduler, self.num_classes, self.loss = scheduler, num_classes, loss
        self.ca_variant, self.ca_alpha, self.lambda_sp = ca_variant, ca_alpha, lambda_sp
        self.boost = torch.ones(num_classes) if boost is None else boost
        self.sp_start_step, self.sp_levels, self.drop_rate = sp_start_step, sp_levels, drop_rate
        self.offset_noise, self.snr_gamma = offset_noise, snr_gamma
        self.frozen: torch.nn.Module | None = None  # f*: set when stage 2 starts

    @property
    def uses_sp(self) -> bool:
        return self.loss == "ca_mse+ca_sp"

    def start_step(self, step: int, model: torch.nn.Module) -> None:
        """Stage 2 starts at ``sp_start_step``: the frozen copy of the denoiser is taken then, once."""
        if self.uses_sp and self.frozen is None and step >= self.sp_start_step:
            self.frozen = frozen_copy(model)

    def __call__(self, model, images: torch.Tensor, labels: torch.Tensor, draws,
                 autocast: Callable[[], ContextManager] = nullcontext) -> tuple[torch.Tensor, dict]:
        """The loss of one batch and its named terms (``sp_ratio``: CA-SP's share, is stage 2 doing anything?)."""
        r = spade_forward(model, self.scheduler, images, labels, self.num_classes, draws, drop_rate=self.drop_rate,
                          offset_noise=self.offset_noise, snr_gamma=self.snr_gamma, autocast=autocast)
        onehot, cond, nb = r.onehot, r.cond, r.noised
        pred = r.out[:, : images.shape[1]]
        if self.loss == "mse":
            terms = {"mse": mse(pred, nb.target, ignore=labels == IGNORE_INDEX, sample_weights=nb.sample_weights)}
            return terms["mse"], terms
        weights = class_pixel_weights(onehot, variant=self.ca_variant, boost=self.boost.to(images.device),
                                      alpha=self.ca_alpha)
        terms = {"ca_mse": ca_mse(pred, nb.target, onehot, weights=weights, sample_weights=nb.sample_weights)}
        loss = terms["ca_mse"]
        if self.uses_sp and self.frozen is not None:
            x0_hat = predict_x0(self.scheduler, nb.x_t, pred, nb.t)
            sp_draws = as_draws(draws).spawn(CA_SP_NOISE)  # t', e': a stream of its own
            with autocast():
                terms["ca_sp"] = ca_sp(self.frozen, images, x0_hat, cond, weights, self.scheduler, sp_draws,
                                       levels=self.sp_levels, snr_gamma=self.snr_gamma)
            loss = loss + self.lambda_sp * terms["ca_sp"]
            terms["sp_ratio"] = (self.lambda_sp * terms["ca_sp"] / terms["ca_mse"].clamp_min(1e-12)).detach()
        return loss, terms

    def frozen_state(self) -> dict | None:
        """What a checkpoint keeps of stage 2 (the frozen copy's weights), or None in stage 1."""
        return None if self.frozen is None else self.frozen.state_dict()

    def load_frozen_state(self, state: dict, model: torch.nn.Module) -> None:
        """Restore stage 2 from ``frozen_state()`` onto a copy of ``model``'s architecture."""
        self.frozen = frozen_copy(model)
        self.frozen.load_state_dict(state)
