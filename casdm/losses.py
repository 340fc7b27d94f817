"""Losses: plain MSE, class-aware MSE (CA-MSE) and the class-aware self-perceptual loss (CA-SP).

All weights are computed in float32 whatever the autocast dtype: the released code counts pixels in
fp16 and overflows to NaN on tiny regions (a 1-pixel class at 256 px gives a raw weight of 65,536).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from casdm.draws import BatchDraws, as_draws


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


def _per_sample(err: torch.Tensor, sample_weights: torch.Tensor | None) -> torch.Tensor:
    return err if sample_weights is None else err * sample_weights.float().view(-1, 1, 1, 1)


def mse(pred: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None = None, *,
        ignore: torch.Tensor | None = None, sample_weights: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Plain MSE (the ablation baseline); ignore pixels are left out of the mean. ``sample_weights``
    [B] weight whole images (the timestep weighting of ``timestep_weights``)."""
    err = _per_sample((pred.float() - target.float()) ** 2, sample_weights)
    if ignore is None:
        return err.mean()
    keep = (~ignore.bool()).unsqueeze(1).float()
    return (err * keep).sum() / (keep.sum() * err.shape[1]).clamp_min(1.0)


def ca_mse(pred: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor, *, variant: str = "paper",
           boost: torch.Tensor | None = None, alpha: float = 1.0, ignore: torch.Tensor | None = None,
           weights: torch.Tensor | None = None, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(1 / (B*C*H*W)) * sum w * (pred - target)^2, exactly as the released code (not divided by sum w);
    ``sample_weights`` as in ``mse`` (1 for every image: the paper's loss)."""
    if weights is None:
        weights = class_pixel_weights(onehot, variant=variant, boost=boost, alpha=alpha, ignore=ignore)
    return _per_sample(weights * (pred.float() - target.float()) ** 2, sample_weights).mean()


def timestep_weights(scheduler, t: torch.Tensor, snr_gamma: float | None) -> torch.Tensor | None:
    """Min-SNR-gamma weights (Hang et al. 2023) per image: min(SNR_t, gamma) / SNR_t for epsilon
    targets, min(SNR_t, gamma) / (SNR_t + 1) for velocity ones, so the loss of every prediction type is
    the x0 error clipped at SNR gamma. Low-noise steps stop dominating the gradient, which is what
    makes a model converge faster; ``None`` (off) leaves the loss as the paper defines it."""
    if snr_gamma is None:
        return None
    abar = scheduler.alphas_cumprod.to(t.device)[t].double()
    snr = abar / (1 - abar).clamp_min(1e-20)
    clipped = snr.clamp(max=snr_gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return (clipped / (snr + 1)).float()
    return (clipped / snr.clamp_min(1e-20)).float()


def draw_noise(shape: tuple, generator: BatchDraws | torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """Training noise; ``offset`` > 0 adds offset noise (one extra N(0, offset^2) value per image and
    channel, Guttenberg 2023), so the model learns to change an image's mean colour, which plain noise
    at the last timestep almost never asks of it (the colour-cast failure)."""
    draws = as_draws(generator)
    noise = draws.randn(shape)
    if offset > 0:
        noise = noise + offset * draws.randn(shape[:2] + (1,) * (len(shape) - 2))
    return noise


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to output at (x0, noise, t): the noise (``epsilon``) or the velocity
    sqrt(abar) * noise - sqrt(1 - abar) * x0 (``v_prediction``), per the scheduler's config."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"prediction_type {kind!r}: expected 'epsilon' or 'v_prediction'")


def x0_from_output(scheduler, x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Clean-image estimate from the model output, keeping the graph, unclipped. For ``v_prediction``
    x0 = sqrt(abar) * x_t - sqrt(1 - abar) * v, defined at every t (zero terminal SNR included); for
    ``epsilon`` x0 = (x_t - sqrt(1 - abar) * eps) / sqrt(abar), undefined where abar = 0 (which is why
    ``zero_snr`` requires ``v_prediction``)."""
    abar = scheduler.alphas_cumprod.to(x_t.device)[t].float().view(-1, 1, 1, 1)
    x_t, out = x_t.float(), model_out.float()
    if scheduler.config.prediction_type == "v_prediction":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * out
    return (x_t - (1 - abar).sqrt() * out) / abar.sqrt().clamp_min(1e-4)


def predict_x0(scheduler, x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x0_from_output`` clipped to [-1, 1] with a straight-through gradient: the value is clipped (the
    frozen network sees images in range), the gradient passes as if it were not, so the estimate keeps
    learning where it overshoots (at large t, often; a plain clamp would give those pixels no gradient)."""
    x0 = x0_from_output(scheduler, x_t, model_out, t)
    return x0 + (x0.clamp(-1, 1) - x0).detach()


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The perceptual network f*: a copy of the denoiser with frozen parameters, in eval mode.
    Gradients still flow through it to its *input*, which is what trains the online model."""
    f = copy.deepcopy(model)
    f.requires_grad_(False)
    return f.eval()


def ca_sp(frozen: torch.nn.Module, x0: torch.Tensor, x0_hat: torch.Tensor, segmap: torch.Tensor,
          pixel_weights: torch.Tensor, scheduler, generator: BatchDraws | torch.Generator | None = None,
          levels: int = 1, snr_gamma: float | None = None) -> torch.Tensor:
    """Class-aware self-perceptual loss.

    Both the real x0 and the prediction x0_hat are re-noised at a fresh timestep t' with the *same
    fresh* noise e' (the released code reused the predicted noise; ``generator`` must be a stream of
    its own, not the one that drew the training noise), passed through the frozen denoiser f*, and
    their features F_l (the middle block, plus ``levels - 1`` decoder levels) compared:

        CA-SP = (1 / L) * sum_l mean_{b, c, p} pool_l(w)[b, p] * (F_l(x0_hat)[b, c, p] - F_l(x0)[b, c, p])^2

    where w are CA-MSE's pixel weights and pool_l their average pooling to level l's size. Average
    pooling keeps each image's mean weight, so CA-SP is weighted on exactly CA-MSE's scale (``paper``:
    the class weights of an image sum to 1; ``balanced``: mean pixel weight 1) and lambda_SP means the
    same thing for both variants. The real branch needs no graph; the predicted one keeps it.

    ``snr_gamma``: each image's comparison is weighted by ``timestep_weights`` at its own t', as CA-MSE
    is at its t, so one timestep weighting runs through the whole objective (with min-SNR on, an
    unweighted CA-SP acted ~5x stronger than lambda_SP says against the weighted CA-MSE, and mostly at
    the high-noise steps where CA-MSE gives almost no signal); None: the loss as published.
    """
    b = x0.shape[0]
    T = scheduler.config.num_train_timesteps
    draws = as_draws(generator)  # CPU draws, sliced per process: the same t', e' whatever the world size
    t2 = draws.randint(T, (b,)).to(x0.device)
    e2 = draws.randn(tuple(x0.shape), dtype=x0.dtype).to(x0.device)
    dtype = next(frozen.parameters()).dtype
    # features as the tuple's second item, not ``.features``: under mixed precision the frozen copy
    # keeps accelerate's fp32 output cast, which rebuilds a SPADEUNetOutput with its features lost,
    # and CA-SP silently summed nothing (0.0 at every step of a bf16 run)
    with torch.no_grad():
        real = frozen(scheduler.add_noise(x0, e2, t2).to(dtype), t2, segmap, return_features=True,
                      return_dict=False, feature_levels=levels)[1]
    pred = frozen(scheduler.add_noise(x0_hat.to(x0.dtype), e2, t2).to(dtype), t2, segmap, return_features=True,
                  return_dict=False, feature_levels=levels)[1]  # the frozen copy stops where CA-SP stops
    if len(real) < levels or len(pred) < levels:
        raise ValueError(f"CA-SP: {levels} feature levels requested, the frozen denoiser returned {len(pred)}")
    per_image = timestep_weights(scheduler, t2, snr_gamma)
    total = x0.new_zeros((), dtype=torch.float32)
    for fr, fp in list(zip(real, pred))[:levels]:
        w = F.adaptive_avg_pool2d(pixel_weights.float(), fr.shape[-2:])
        total = total + _per_sample(w * (fp.float() - fr.float()) ** 2, per_image).mean()
    return total / levels
