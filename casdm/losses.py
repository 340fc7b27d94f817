"""Losses: plain MSE, class-aware MSE (CA-MSE) and the class-aware self-perceptual loss (CA-SP).

All weights are computed in float32 whatever the autocast dtype: the released code counts pixels in
fp16 and overflows to NaN on tiny regions (a 1-pixel class at 256 px gives a raw weight of 65,536).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


def _valid(onehot: torch.Tensor, ignore: torch.Tensor | None) -> torch.Tensor:
    """Float32 one-hot with ignore pixels (explicit mask, or no class at all) zeroed."""
    oh = onehot.float()
    if ignore is not None:
        oh = oh * (~ignore.bool()).unsqueeze(1).float()
    return oh


def class_pixel_weights(onehot: torch.Tensor, *, variant: str = "paper", boost: torch.Tensor | None = None,
                        alpha: float = 1.0, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel class-aware weights w[b, 1, h, w] (float32).

    Per image: each present class gets raw weight (N / n_c) ** alpha (absent classes 0), times its
    boost; the class weights are normalised to sum to 1 and every pixel takes its class's weight.
    ``paper`` stops there (an image holding one tiny region is down-weighted as a whole);
    ``balanced`` rescales each image so its mean pixel weight is 1.
    """
    if variant not in ("paper", "balanced"):
        raise ValueError(f"ca_mse variant {variant!r}: expected 'paper' or 'balanced'")
    with torch.autocast(device_type=onehot.device.type, enabled=False):
        oh = _valid(onehot, ignore)
        n = oh.sum(dim=(2, 3))  # [B, K] pixels per class per image
        N = float(oh.shape[2] * oh.shape[3])
        raw = torch.where(n > 0, (N / n.clamp_min(1.0)) ** alpha, torch.zeros_like(n))
        if boost is not None:
            raw = raw * boost.to(raw)
        w = raw / raw.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        pix = torch.einsum("bk,bkhw->bhw", w, oh).unsqueeze(1)
        if variant == "balanced":
            pix = pix / pix.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return pix


def mse(pred: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None = None, *,
        ignore: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Plain MSE (the ablation baseline); ignore pixels are left out of the mean."""
    err = (pred.float() - target.float()) ** 2
    if ignore is None:
        return err.mean()
    keep = (~ignore.bool()).unsqueeze(1).float()
    return (err * keep).sum() / (keep.sum() * err.shape[1]).clamp_min(1.0)


def ca_mse(pred: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor, *, variant: str = "paper",
           boost: torch.Tensor | None = None, alpha: float = 1.0, ignore: torch.Tensor | None = None,
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """(1 / (B*C*H*W)) * sum w * (pred - target)^2, exactly as the released code (not divided by sum w)."""
    if weights is None:
        weights = class_pixel_weights(onehot, variant=variant, boost=boost, alpha=alpha, ignore=ignore)
    return (weights * (pred.float() - target.float()) ** 2).mean()


def predict_x0(scheduler, x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Clean-image estimate from the model output (epsilon or v), keeping the graph; clipped to [-1, 1]."""
    abar = scheduler.alphas_cumprod.to(x_t.device)[t].float().view(-1, 1, 1, 1)
    x_t, out = x_t.float(), model_out.float()
    if scheduler.config.prediction_type == "v_prediction":
        x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * out
    else:
        x0 = (x_t - (1 - abar).sqrt() * out) / abar.sqrt().clamp_min(1e-4)
    return x0.clamp(-1, 1)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The perceptual network f*: a copy of the denoiser with frozen parameters, in eval mode.
    Gradients still flow through it to its *input*, which is what trains the online model."""
    f = copy.deepcopy(model)
    f.requires_grad_(False)
    return f.eval()


def ca_sp(frozen: torch.nn.Module, x0: torch.Tensor, x0_hat: torch.Tensor, segmap: torch.Tensor,
          pixel_weights: torch.Tensor, scheduler, generator: torch.Generator | None = None,
          levels: int = 1) -> torch.Tensor:
    """Class-aware self-perceptual loss.

    Both the real x0 and the prediction x0_hat are re-noised at a fresh timestep t' with the *same
    fresh* noise e' (the released code reused the predicted noise), passed through the frozen
    denoiser, and their features (the middle block, plus ``levels - 1`` decoder levels) compared by a
    squared error weighted by the class-aware pixel weights average-pooled to each feature size and
    renormalised to mean 1 per image. The real branch needs no graph; the predicted one keeps it.
    """
    b = x0.shape[0]
    T = scheduler.config.num_train_timesteps
    t2 = torch.randint(0, T, (b,), generator=generator, device=x0.device)
    e2 = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    dtype = next(frozen.parameters()).dtype
    with torch.no_grad():
        real = frozen(scheduler.add_noise(x0, e2, t2).to(dtype), t2, segmap, return_features=True).features
    pred = frozen(scheduler.add_noise(x0_hat.to(x0.dtype), e2, t2).to(dtype), t2, segmap,
                  return_features=True).features
    total = x0.new_zeros((), dtype=torch.float32)
    for fr, fp in list(zip(real, pred))[:levels]:
        w = F.adaptive_avg_pool2d(pixel_weights.float(), fr.shape[-2:])
        w = w / w.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        total = total + (w * (fp.float() - fr.float()) ** 2).mean()
    return total / levels
