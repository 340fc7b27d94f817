"""Noise schedules and samplers by name: one schedule for training and sampling, unless asked otherwise.

The released CASDM trains epsilon on a zero-SNR scaled-linear schedule and samples on a different,
linear zero-SNR one starting at t = T, where epsilon prediction is undefined (alpha_bar_T = 0 divides
x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) by zero). By default the same betas serve both.
``diffusion.release_pair: true`` reproduces the release's pair, with alpha_bar_T clamped to 2^-24, the
value diffusers' Euler, DPM-Solver and UniPC schedulers clamp it to (its DDPM and DDIM do not).
"""
from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}
TERMINAL_ALPHA_BAR = 2.0 ** -24  # diffusers' Euler / DPM-Solver / UniPC clamp for a zero-SNR alpha_bar_T
RELEASE_SAMPLING_BETAS = "linear"  # the released CASDM's samplers (trained on scaled_linear)


def schedule_kwargs(diffusion, sampling: bool = False) -> dict:
    """Keyword arguments shared by every scheduler, from the ``diffusion`` section of params.yaml
    (``sampling``: for a sampler, whose betas differ from training's under ``release_pair``)."""
    betas = RELEASE_SAMPLING_BETAS if sampling and diffusion.release_pair else diffusion.beta_schedule
    kw = dict(num_train_timesteps=diffusion.num_train_timesteps, beta_schedule=betas,
              beta_start=diffusion.beta_start, beta_end=diffusion.beta_end,
              prediction_type=diffusion.prediction_type)
    if diffusion.zero_snr:
        kw.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return kw


def clamp_terminal(scheduler):
    """Epsilon on zero-SNR betas (``release_pair``): alpha_bar_T 0 -> 2^-24, so t = T gives an image.
    Read from the scheduler's own config, so a pipeline loaded cold (``from_pretrained``) is clamped too."""
    c = scheduler.config
    if c.get("rescale_betas_zero_snr") and c.get("prediction_type") == "epsilon" and scheduler.alphas_cumprod[-1] == 0:
        scheduler.alphas_cumprod[-1] = TERMINAL_ALPHA_BAR
    return scheduler


def make_scheduler(name: str, diffusion, learned_variance: bool = False, sampling: bool = False):
    """A diffusers scheduler by name, on the training schedule (``sampling``: a sampler's schedule, which
    ``release_pair`` makes the release's linear betas)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
    kw = schedule_kwargs(diffusion, sampling=sampling)
    if name == "ddpm":
        kw.update(variance_type="learned_range" if learned_variance else "fixed_small", clip_sample=True)
    elif name == "ddim":
        kw.update(clip_sample=True, set_alpha_to_one=False)
    else:
        kw.update(algorithm_type="dpmsolver++", solver_order=2)
        if diffusion.zero_snr:
            kw.update(final_sigmas_type="zero")
    return clamp_terminal(SCHEDULERS[name](**kw))


def scheduler_like(name: str, config):
    """Sampler ``name`` on the schedule of another scheduler's ``config`` (a pretrained checkpoint's
    ``scheduler/`` folder): its betas, spacing and prediction type, so sampling matches training."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if name == "dpmsolver++" else {}
    return SCHEDULERS[name].from_config(config, **extra)
