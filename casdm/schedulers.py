"""Noise schedules and samplers by name: one schedule for training and sampling.

The released CASDM trains on a zero-SNR scaled-linear schedule and samples on a different linear one
starting where epsilon prediction is undefined; here the same betas serve both, by construction.
"""
from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}


def schedule_kwargs(diffusion) -> dict:
    """Keyword arguments shared by every scheduler, from the ``diffusion`` section of params.yaml."""
    kw = dict(num_train_timesteps=diffusion.num_train_timesteps, beta_schedule=diffusion.beta_schedule,
              beta_start=diffusion.beta_start, beta_end=diffusion.beta_end,
              prediction_type=diffusion.prediction_type)
    if diffusion.zero_snr:
        kw.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return kw


def make_scheduler(name: str, diffusion, learned_variance: bool = False):
    """A diffusers scheduler by name, on the training schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
    kw = schedule_kwargs(diffusion)
    if name == "ddpm":
        kw.update(variance_type="learned_range" if learned_variance else "fixed_small", clip_sample=True)
    elif name == "ddim":
        kw.update(clip_sample=True, set_alpha_to_one=False)
    else:
        kw.update(algorithm_type="dpmsolver++", solver_order=2)
        if diffusion.zero_snr:
            kw.update(final_sigmas_type="zero")
    return SCHEDULERS[name](**kw)


def scheduler_like(name: str, config):
    """Sampler ``name`` on the schedule of another scheduler's ``config`` (a pretrained checkpoint's
    ``scheduler/`` folder): its betas, spacing and prediction type, so sampling matches training."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if name == "dpmsolver++" else {}
    return SCHEDULERS[name].from_config(config, **extra)
