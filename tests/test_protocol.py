"""Protocol defects that made numbers wrong (issue 13): each test fails on the old behaviour.

- every kind trains on the target of the configured prediction type (an oracle that outputs the exact
  velocity scores ~0 only if the kind's target is the velocity), and zero terminal SNR is safe;
- CA-SP's fresh noise is a stream of its own, never the next step's training noise;
- CA-SP's clean-image estimate keeps its gradient where it overshoots [-1, 1];
- CA-SP is weighted on CA-MSE's scale, and its share of the loss is reported;
- ControlNet trains a null for guidance and reports how many steps saw the map.
"""
from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from benchmark.config import ConfigError
from benchmark.data.classes import CHOLECSEG8K
from benchmark.kinds.registry import make_kind
from benchmark.seeds import derive_seed
from casdm.losses import ca_sp, class_pixel_weights, frozen_copy, predict_x0
from casdm.pipeline import to_onehot
from casdm.schedulers import make_scheduler
from tests.conftest import tiny_params

V_PRED = {"diffusion": {"prediction_type": "v_prediction", "zero_snr": True}}
EPSILON = {"diffusion": {"prediction_type": "epsilon", "zero_snr": False}}  # params.yaml's default is V_PRED


def exact(sched, x0, x_t, t, kind: str) -> torch.Tensor:
    """The perfect model's output: the noise recovered from (x_t, x0), or its velocity."""
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    return noise if kind == "epsilon" else sched.get_velocity(x0, noise, t)


class Oracle(nn.Module):
    """Stands in for a kind's network: knows the clean batch, outputs the exact target."""

    def __init__(self, sched, x0, kind, channels=3, spade=True):
        super().__init__()
        self.sched, self.x0, self.kind, self.channels, self.spade = sched, x0, kind, channels, spade
        self.w = nn.Parameter(torch.zeros(()))
        self.use_control = True

    def forward(self, x_t, t, *_, **__):
        out = exact(self.sched, self.x0, x_t, t, self.kind) + 0 * self.w
        out = torch.cat([out, torch.zeros_like(out)], 1) if self.channels == 6 else out
        return (out, []) if self.spade else out  # the SPADE U-Net is read as a tuple (return_dict=False)


@pytest.mark.parametrize("name,loss", [("casdm-camse", "ca_mse"), ("casdm-mse", "mse"), ("sdm", "mse"),
                                       ("controlnet", "controlnet_mse")])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_every_kind_trains_on_its_prediction_types_target(name, loss, prediction):
    over = V_PRED if prediction == "v_prediction" else EPSILON
    kind = make_kind(tiny_params(**over), name, CHOLECSEG8K)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, 13, (4, 32, 32), generator=g)
    oracle = Oracle(kind.noise_scheduler, x0, prediction, channels=6 if name == "sdm" else 3,
                    spade=name != "controlnet")
    total, terms = kind.loss(oracle, x0, labels, torch.Generator().manual_seed(0), Accelerator(cpu=True))
    assert terms[loss].item() < 1e-6, terms  # the kind's target is the oracle's
    wrong = Oracle(kind.noise_scheduler, x0, "v_prediction" if prediction == "epsilon" else "epsilon",
                   channels=oracle.channels, spade=oracle.spade)
    assert kind.loss(wrong, x0, labels, torch.Generator().manual_seed(0), Accelerator(cpu=True))[1][loss] > 1e-3  # min-SNR weights shrink it
    assert torch.isfinite(total)


def test_zero_terminal_snr_is_finite_for_sdms_bound_and_casdms_estimate():
    from baselines.sdm import hybrid_loss

    p = tiny_params(**V_PRED)
    sched = make_scheduler("ddpm", p.diffusion, learned_variance=True)
    assert sched.alphas_cumprod[-1] < 1e-6  # zero SNR: x_T is pure noise
    t = torch.tensor([0, 500, 999])
    x0, noise = torch.rand(3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 8, 8)
    x_t = sched.add_noise(x0, noise, t)
    out = torch.cat([sched.get_velocity(x0, noise, t), torch.zeros(3, 3, 8, 8)], 1)
    terms = hybrid_loss(sched, out, sched.get_velocity(x0, noise, t), x0, x_t, t)
    assert all(torch.isfinite(v) for v in terms.values()), terms
    assert torch.allclose(predict_x0(sched, x_t, out[:, :3], t), x0.clamp(-1, 1), atol=1e-4)


def test_zero_snr_with_epsilon_prediction_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"diffusion: .*zero_snr: true needs prediction_type: v_prediction"):
        tiny_params(diffusion={"zero_snr": True, "prediction_type": "epsilon"})
    with pytest.raises(ConfigError, match=r"release_pair: true is the released run's pair: it needs prediction_type: "
                                          r"epsilon, beta_schedule: scaled_linear and zero_snr: true"):
        tiny_params(diffusion={"release_pair": True})  # params.yaml's v-prediction on linear betas


RELEASE = {"diffusion": {"prediction_type": "epsilon", "beta_schedule": "scaled_linear", "zero_snr": True,
                         "release_pair": True}}


def test_the_released_schedule_pair_trains_on_scaled_linear_samples_on_linear_and_gives_an_image_at_t_T():
    """The released CASDM: epsilon trained on zero-SNR scaled-linear betas, sampled on zero-SNR linear betas
    from t = T, where alpha_bar is 0; clamped to 2^-24, x0 at t = T is the hand formula, finite."""
    from diffusers import DDIMScheduler

    from casdm.pipeline import CASDMPipeline
    from casdm.schedulers import TERMINAL_ALPHA_BAR

    d = tiny_params(**RELEASE).diffusion
    train, sample = make_scheduler("ddpm", d), make_scheduler("ddim", d, sampling=True)
    assert (train.config.beta_schedule, sample.config.beta_schedule) == ("scaled_linear", "linear")
    assert train.alphas_cumprod[-1] == sample.alphas_cumprod[-1] == TERMINAL_ALPHA_BAR
    assert not torch.allclose(train.alphas_cumprod[:-1], sample.alphas_cumprod[:-1])  # two schedules, as released
    sample.set_timesteps(4)
    t = int(sample.timesteps[0])
    assert t == d.num_train_timesteps - 1
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    x0 = sample.step(eps, t, x).pred_original_sample
    a = TERMINAL_ALPHA_BAR
    assert torch.isfinite(x0).all()
    assert torch.allclose(x0, ((x - (1 - a) ** 0.5 * eps) / a ** 0.5).clamp(-1, 1))
    # a pipeline built on an unclamped scheduler (a cold from_pretrained reads only the config) is clamped
    raw = DDIMScheduler(**{k: v for k, v in sample.config.items() if not k.startswith("_")})
    assert raw.alphas_cumprod[-1] == 0
    pipe = CASDMPipeline(make_kind(tiny_params(**RELEASE), "casdm-mse", CHOLECSEG8K).build(), raw)
    assert pipe.scheduler.alphas_cumprod[-1] == TERMINAL_ALPHA_BAR
    # the default: one schedule for both
    d0 = tiny_params().diffusion
    assert torch.equal(make_scheduler("ddpm", d0).alphas_cumprod, make_scheduler("ddim", d0, sampling=True).alphas_cumprod)


def test_ca_sp_fresh_noise_is_not_the_next_steps_training_noise(monkeypatch):
    import casdm.objective as casdm_objective

    kind = make_kind(tiny_params(train={"batch_size": 8}), "casdm", CHOLECSEG8K)
    model = kind.build()
    kind.on_step(10_000, model)  # stage 2
    seen = {}

    def spy(*args, **kwargs):
        gen = args[6]  # a BatchDraws: its generator is where the draws come from
        seen["state"] = gen.generator.get_state()
        return ca_sp(*args, **kwargs)

    monkeypatch.setattr(casdm_objective, "ca_sp", spy)
    images, labels = torch.rand(8, 3, 32, 32) * 2 - 1, torch.randint(0, 13, (8, 32, 32))
    step = 7
    kind.loss(model, images, labels, torch.Generator().manual_seed(derive_seed(0, step)), Accelerator(cpu=True))
    # the old code reseeded the step's generator to the step's seed + 1: the very stream that draws
    # step s+1's training noise. CA-SP's draws must come from no training step's stream.
    step_streams = {derive_seed(0, k): torch.Generator().manual_seed(derive_seed(0, k)).get_state()
                    for k in range(0, 200)}
    assert not any(torch.equal(seen["state"], st) for st in step_streams.values())
    gen = torch.Generator()
    gen.set_state(seen["state"])
    torch.randint(0, 1000, (8,), generator=gen)  # t', then e'
    e_prime = torch.randn(images.shape, generator=gen)
    next_noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(derive_seed(0, step + 1)))
    assert (e_prime == next_noise).float().mean() < 0.01


def test_ca_sp_estimate_keeps_its_gradient_where_it_overshoots():
    sched = make_scheduler("ddpm", tiny_params().diffusion)
    t = torch.tensor([900, 900])
    x_t = torch.full((2, 3, 4, 4), 2.0)  # far outside the image range at large t: |x0| > 1
    out = torch.zeros(2, 3, 4, 4, requires_grad=True)
    x0 = predict_x0(sched, x_t, out, t)
    assert x0.max() <= 1 and x0.min() >= -1  # the value is clipped
    (grad,) = torch.autograd.grad(x0.sum(), out)
    assert (grad != 0).all()  # ... the gradient is not


def test_ca_sp_is_weighted_on_ca_mses_scale_and_its_share_is_reported():
    kind = make_kind(tiny_params(), "casdm", CHOLECSEG8K)
    model = kind.build()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    frozen = frozen_copy(model)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, 4, (2, 32, 32), generator=g)
    oh = to_onehot(labels, 13)
    w = class_pixel_weights(oh)  # "paper": each image's class weights sum to 1, mean pixel weight << 1
    sp = lambda weights: ca_sp(frozen, x0, x0 + 0.3, oh, weights, kind.noise_scheduler,
                               torch.Generator().manual_seed(1)).item()
    assert sp(2 * w) == pytest.approx(2 * sp(w), rel=1e-5)  # no renormalisation: CA-MSE's scale
    assert sp(w) < sp(torch.ones_like(w))
    kind.on_step(10_000, model)
    _, terms = kind.loss(model, x0, labels, torch.Generator().manual_seed(2), Accelerator(cpu=True))
    lam = kind.options.lambda_sp
    assert terms["sp_ratio"].item() == pytest.approx(lam * terms["ca_sp"].item() / terms["ca_mse"].item(), rel=1e-5)


def test_controlnet_trains_a_null_and_reports_its_map_conditioned_steps():
    p = tiny_params(train={"steps": 10}, models={"controlnet": {"training": {"text_encoder": "learned",
                                                                            "drop_rate": 1.0}}})
    kind = make_kind(p, "controlnet", CHOLECSEG8K)
    assert kind.conditioned_steps(10) == 10 - kind.switch == 5
    model = kind.build()
    labels = torch.randint(0, 13, (2, 32, 32))
    loss, _ = kind.loss(model, torch.rand(2, 3, 32, 32) * 2 - 1, labels, torch.Generator().manual_seed(0),
                        Accelerator(cpu=True))
    loss.backward()
    assert model.prompt.embed.weight.grad is None or model.prompt.embed.weight.grad.abs().sum() == 0  # all dropped
    kind0 = make_kind(tiny_params(models={"controlnet": {"training": {"text_encoder": "learned", "drop_rate": 0.0}}}),
                      "controlnet", CHOLECSEG8K)
    model0 = kind0.build()
    kind0.loss(model0, torch.rand(2, 3, 32, 32) * 2 - 1, labels, torch.Generator().manual_seed(0),
               Accelerator(cpu=True))[0].backward()
    assert model0.prompt.embed.weight.grad.abs().sum() > 0


def test_the_map_generator_predicts_clean_maps_whatever_the_prediction_type(prepared):
    """mapgen overrides the prediction type with "sample" (clean-map logits): v-prediction and zero SNR
    change its schedule, never its target."""
    from benchmark.engine.data import PreparedDataset
    from benchmark.stages.mapgen import MAPGEN, generator_params

    data = PreparedDataset(prepared, "train")
    kind = make_kind(generator_params(tiny_params(**V_PRED)), MAPGEN, data.table)
    assert kind.noise_scheduler.config.prediction_type == "sample" and kind.noise_scheduler.alphas_cumprod[-1] < 1e-6
    kind.prepare(data)
    model = kind.build()
    labels = torch.stack([data[i]["labels"] for i in range(4)])
    loss, _ = kind.loss(model, None, labels, torch.Generator().manual_seed(0), Accelerator(cpu=True))
    assert torch.isfinite(loss)


def test_sdm_drops_the_map_only_in_its_guidance_phase_and_reports_it():
    """SDM's recipe: the map always given, then a classifier-free fine-tune (the last guidance_fraction of the
    steps) where drop_rate of the maps are zeroed; its map-conditioned steps count only what was seen."""
    p = tiny_params(train={"steps": 20}, models={"sdm": {"training": {"drop_rate": 1.0, "guidance_fraction": 0.25}}})
    kind = make_kind(p, "sdm", CHOLECSEG8K)
    assert kind.guidance_start == 15 and kind.conditioned_steps(20) == 15
    model = kind.build()
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    labels = torch.randint(0, 13, (2, 32, 32))
    seen = {}

    def record(module, args, kwargs, out):
        seen["cond"] = args[2].detach().clone()

    handle = model.register_forward_hook(record, with_kwargs=True)
    for step, conditioned in ((0, True), (14, True), (15, False), (19, False)):
        kind.on_step(step, model)
        kind.loss(model, x0, labels, torch.Generator().manual_seed(step), Accelerator(cpu=True))
        assert (seen["cond"].abs().sum() > 0) == conditioned, step  # drop_rate 1: every map zeroed in the phase
    handle.remove()
    half = make_kind(tiny_params(train={"steps": 20}, models={"sdm": {"training": {"drop_rate": 0.2,
                                                                                     "guidance_fraction": 1.0}}}),
                     "sdm", CHOLECSEG8K)
    assert half.guidance_start == 0 and half.conditioned_steps(20) == 16  # dropped from step 0: 20 - 0.2 x 20
