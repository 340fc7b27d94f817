"""SDM (Wang et al. 2022, "Semantic Image Synthesis via Diffusion Models"): its loss.

Same SPADE U-Net as CASDM, but with a learned variance (6 output channels) trained by the hybrid
loss of Improved DDPM: the simple noise MSE plus the variational-bound term, in which the predicted
mean is stop-gradiented so the bound trains only the variance. Map dropout 0.2 and guidance 1.5 by
default (params.yaml); sampled by diffusers' DDPM scheduler with ``variance_type="learned_range"``.
The network is CASDM's ``SPADEUNet(learn_sigma=True)``; the harness's adapter is ``benchmark/kinds/sdm.py``.
"""
from __future__ import annotations

import math

import torch

from casdm.losses import mse, x0_from_output


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """A fast tanh approximation of the standard normal CDF (the one Improved DDPM uses)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian discretised to bins of width 2/255."""
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (x - mean + 1 / 255))
    cdf_min = _std_normal_cdf(inv_std * (x - mean - 1 / 255))
    log_plus = torch.log(cdf_plus.clamp_min(1e-12))  # lowest bin: everything below
    log_one_minus_min = torch.log((1 - cdf_min).clamp_min(1e-12))  # highest bin: everything above
    log_delta = torch.log((cdf_plus - cdf_min).clamp_min(1e-12))
    return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_one_minus_min, log_delta))


def posterior_terms(sched, t: torch.Tensor):
    """Per-timestep coefficients of q(x_{t-1} | x_t, x_0) and the learned-range variance bounds."""
    betas = sched.betas.to(torch.float64)
    abar = sched.alphas_cumprod.to(torch.float64)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # clipped: var at t=0 is 0
    coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
    coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    pick = lambda v: v.to(t.device)[t].float().view(-1, 1, 1, 1)
    return dict(coef_x0=pick(coef_x0), coef_xt=pick(coef_xt), post_logvar=pick(post_logvar),
                max_logvar=pick(torch.log(betas)), abar=pick(abar))


def _image_mean(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Per-image mean over channels and pixels; with ``keep`` ([B, H, W], 1 = counted) over kept pixels."""
    if keep is None:
        return x.mean(dim=(1, 2, 3))
    k = keep.unsqueeze(1).to(x)
    return (x * k).sum(dim=(1, 2, 3)) / (k.sum(dim=(1, 2, 3)) * x.shape[1]).clamp_min(1.0)


def vb_term(sched, x0_pred: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
            t: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Variational-bound term per image, in bits per dimension; ``x0_pred`` (the model's clean-image
    estimate, from epsilon or v) must already be detached: the bound trains only the variance ``v``.
    ``ignore`` ([B, H, W] bool): pixels left out of the mean, as every model's loss leaves them out."""
    c = posterior_terms(sched, t)
    true_mean = c["coef_x0"] * x0 + c["coef_xt"] * x_t
    model_mean = c["coef_x0"] * x0_pred + c["coef_xt"] * x_t
    frac = (v + 1) / 2  # the model's output in [-1, 1] interpolates log-variance between the bounds
    model_logvar = frac * c["max_logvar"] + (1 - frac) * c["post_logvar"]
    keep = None if ignore is None else ~ignore.bool()
    kl = _image_mean(normal_kl(true_mean, c["post_logvar"], model_mean, model_logvar), keep) / math.log(2)
    nll = -_image_mean(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar), keep) / math.log(2)
    return torch.where(t == 0, nll, kl)


def hybrid_loss(sched, out: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor, sample_weights: torch.Tensor | None = None,
                ignore: torch.Tensor | None = None) -> dict:
    """L_simple + L_vb (Improved DDPM's hybrid objective with T = 1000, as SDM trains). ``target`` is
    the scheduler's training target (noise or velocity); the bound's mean comes from the clean-image
    estimate of the same prediction type. ``sample_weights`` (min-SNR) weight the simple term, as for
    every other model; the bound, which trains only the variance, is left as published. ``ignore``
    pixels ([B, H, W]) count in neither term, as in every model's loss."""
    c = x0.shape[1]
    pred, v = out[:, :c].float(), out[:, c:].float()
    x0_pred = x0_from_output(sched, x_t, pred.detach(), t)
    return {"mse": mse(pred, target, ignore=ignore, sample_weights=sample_weights),
            "vb": vb_term(sched, x0_pred, v, x0.float(), x_t.float(), t, ignore).mean()
            * sched.config.num_train_timesteps / 1000}
