"""Model kinds by name: every params.yaml model builds, the ablations differ only in the loss, SDM's
variational term matches a hand computation, and a kind declared by an entry point is found."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.sdm import hybrid_loss, vb_term
from benchmark.config import load_params
from benchmark.data.classes import CHOLECSEG8K
from benchmark.kinds.registry import KINDS, get_kind, make_kind, training_config
from casdm.losses import x0_from_output
from casdm.schedulers import make_scheduler
from tests.conftest import REPO, tiny_params

DIFFUSION = tiny_params().diffusion  # params.yaml's schedule (no defaults in code)


@pytest.mark.parametrize("name", list(tiny_params().models))
def test_every_model_in_params_trains_a_step_and_samples(name):
    from accelerate import Accelerator

    p = tiny_params()
    kind = make_kind(p, name, CHOLECSEG8K)
    model = kind.build()
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 13, (2, 32, 32), generator=g)
    for step in (0, p.train.steps - 1):  # first and last stage of every kind's schedule
        kind.on_step(step, model)
        loss, terms = kind.loss(model, torch.rand(2, 3, 32, 32) * 2 - 1, labels, g, Accelerator(cpu=True))
        assert torch.isfinite(loss) and terms
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        model.zero_grad()
    images = kind.pipeline(model)(labels, 2, p.models[name].sampling.guidance_scale, output_type="pt").images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_ablations_differ_only_in_the_loss():
    p = load_params(REPO / "params.yaml")
    ladder = ["casdm-mse", "casdm-camse", "casdm"]
    assert [p.models[n].training["loss"] for n in ladder] == ["mse", "ca_mse", "ca_mse+ca_sp"]
    configs = []
    for n in ladder:
        c = training_config(p, n)
        c["training"].pop("loss")
        configs.append((c, p.models[n].sampling, p.models[n].kind))
    assert configs[0] == configs[1] == configs[2]
    assert {p.models[n].role for n in ladder} == {"method", "ablation"}


def test_wrong_loss_for_a_kind_names_the_key():
    p = tiny_params(models={"sdm": {"training": {"loss": "ca_mse"}}})
    with pytest.raises(ValueError, match=r"models\.sdm\.training\.loss: 'ca_mse' is not a loss of kind 'sdm'"):
        make_kind(p, "sdm", CHOLECSEG8K)


def test_options_a_kind_does_not_take_are_refused():
    p = tiny_params(models={"casdm": {"training": {"text_encoder": "minilm"}}})
    with pytest.raises(ValueError, match=r"models\.casdm\.training\.text_encoder: unknown key \(kind 'casdm' takes "
                                         r"\[.*'lambda_sp'"):
        make_kind(p, "casdm", CHOLECSEG8K)
    p = tiny_params(models={"sdm": {"training": {"drop_rate": None}}})
    with pytest.raises(ValueError, match=r"models\.sdm\.training\.drop_rate: Input should be a valid number"):
        make_kind(p, "sdm", CHOLECSEG8K)


def test_unknown_kind_lists_the_registered_ones():
    p = tiny_params(models={"casdm": {"kind": "gan"}})
    with pytest.raises(ValueError, match=r"unknown model kind 'gan'; registered kinds: \[.*'casdm'.*'sdm'"):
        make_kind(p, "casdm", CHOLECSEG8K)


def test_a_kind_declared_by_an_entry_point_is_found(tmp_path, monkeypatch):
    from tests.outside_kind import declare_kind

    declare_kind(tmp_path, "mine", "mybaseline", "Mine",
                 "from benchmark.kinds.casdm import CASDMKind\n\nclass Mine(CASDMKind):\n    losses = ('mse',)\n")
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown model kind 'yours'; registered kinds: \[.*'mine'"):
        get_kind("yours")  # a declared kind is listed before it is loaded
    try:
        assert get_kind("mine").__name__ == "Mine" and get_kind("mine").kind_name == "mine"
        assert get_kind("casdm").kind_name == "casdm"  # the subclass's name did not leak into its parent
    finally:
        KINDS.pop("mine", None)
        sys.modules.pop("mybaseline", None)


# --- SDM's hybrid loss ------------------------------------------------------------------------
def _hand_vb(sched, eps, v, x0, x_t, t):
    """Improved DDPM's L_t for one image, written with Python floats, element by element."""
    b = [float(x) for x in sched.betas.double()]
    ab = [float(x) for x in sched.alphas_cumprod.double()]
    ab_prev = 1.0 if t == 0 else ab[t - 1]
    post_var = lambda s: b[s] * (1 - (1.0 if s == 0 else ab[s - 1])) / (1 - ab[s])
    post_logvar = math.log(post_var(1) if t == 0 else post_var(t))
    c0, ct = b[t] * math.sqrt(ab_prev) / (1 - ab[t]), (1 - ab_prev) * math.sqrt(1 - b[t]) / (1 - ab[t])
    total, n = 0.0, 0
    for idx in range(x0.numel()):
        x0i, xti, ei, vi = (float(a.flatten()[idx]) for a in (x0, x_t, eps, v))
        mu_true = c0 * x0i + ct * xti
        x0p = (xti - math.sqrt(1 - ab[t]) * ei) / math.sqrt(ab[t])
        mu = c0 * x0p + ct * xti
        frac = (vi + 1) / 2
        logvar = frac * math.log(b[t]) + (1 - frac) * post_logvar
        if t > 0:
            total += 0.5 * (-1 + logvar - post_logvar + math.exp(post_logvar - logvar) + (mu_true - mu) ** 2 * math.exp(-logvar))
        else:
            cdf = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
            s = math.exp(-0.5 * logvar)
            hi, lo = cdf(s * (x0i - mu + 1 / 255)), cdf(s * (x0i - mu - 1 / 255))
            p = hi if x0i < -0.999 else (1 - lo) if x0i > 0.999 else hi - lo
            total += -math.log(max(p, 1e-12))
        n += 1
    return total / n / math.log(2)


@pytest.mark.parametrize("t", [0, 7, 500])
def test_vb_term_matches_a_hand_computation(t):
    epsilon = DIFFUSION.model_copy(update={"prediction_type": "epsilon", "zero_snr": False})  # the hand formula's
    sched = make_scheduler("ddpm", epsilon, learned_variance=True)
    g = torch.Generator().manual_seed(t)
    x0 = (torch.randint(0, 256, (1, 3, 4, 4), generator=g).float() / 127.5 - 1)
    noise = torch.randn(1, 3, 4, 4, generator=g)
    tt = torch.tensor([t])
    x_t = sched.add_noise(x0, noise, tt)
    eps = noise + 0.1 * torch.randn(1, 3, 4, 4, generator=g)
    v = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    got = vb_term(sched, x0_from_output(sched, x_t, eps, tt), v, x0, x_t, tt).item()  # x0 from epsilon
    assert got == pytest.approx(_hand_vb(sched, eps, v, x0, x_t, t), rel=1e-4)


def test_vb_trains_only_the_variance():
    sched = make_scheduler("ddpm", DIFFUSION, learned_variance=True)
    out = torch.randn(2, 6, 4, 4, requires_grad=True)
    x0, noise = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4)
    t = torch.tensor([3, 400])
    terms = hybrid_loss(sched, out, noise, x0, sched.add_noise(x0, noise, t), t)
    (grad,) = torch.autograd.grad(terms["vb"], out)
    assert grad[:, :3].abs().sum() == 0 and grad[:, 3:].abs().sum() > 0
    (grad,) = torch.autograd.grad(terms["mse"], out)
    assert grad[:, 3:].abs().sum() == 0 and grad[:, :3].abs().sum() > 0


@pytest.mark.parametrize("name", list(tiny_params().models))
def test_every_model_samples_under_bf16_autocast_close_to_float32(name):
    """``sample.mixed_precision: bf16`` (the CPU default): the networks run in bf16, the scheduler in
    float32, so images stay finite and close to float32's, yet bf16 really ran (they differ)."""
    from benchmark.engine.sample import autocast

    p = tiny_params()
    kind = make_kind(p, name, CHOLECSEG8K)
    model = kind.build().eval()
    labels = torch.randint(0, 13, (2, 32, 32), generator=torch.Generator().manual_seed(0))
    pipe, s = kind.pipeline(model), p.models[name].sampling
    out = {}
    for mode in ("no", "bf16"):
        with autocast(mode, pipe.device):
            gens = [torch.Generator().manual_seed(i) for i in range(2)]
            out[mode] = pipe(labels, 3, s.guidance_scale, generator=gens, output_type="pt").images
    assert torch.isfinite(out["bf16"]).all()
    diff = (out["bf16"] - out["no"]).abs()
    assert 0 < diff.max() and diff.mean() < 0.02  # 0-1 images: under 2 % of the range on average


@pytest.mark.parametrize("name", list(tiny_params().models))
def test_every_models_pixel_loss_leaves_ignore_pixels_out(name):
    """The network's output at an ignore pixel gets no gradient from the loss, for every model alike
    (CASDM's CA-MSE always did; SDM's hybrid loss and ControlNet's MSE counted them). Checked in the
    pixel-space loss of each kind's first stage, and ControlNet's control stage; CA-SP compares features
    of a frozen network, which mixes neighbouring pixels by design."""
    from accelerate import Accelerator

    from casdm.labels import IGNORE_INDEX

    p = tiny_params()
    kind = make_kind(p, name, CHOLECSEG8K)
    model = kind.build()
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 13, (2, 32, 32), generator=g)
    labels[:, :6, :6] = IGNORE_INDEX
    ignore = (labels == IGNORE_INDEX).unsqueeze(1)
    for step in (0,) if kind.kind_name != "controlnet" else (0, p.train.steps - 1):
        kind.on_step(step, model)
        delta = {}

        def nudge(module, args, out):  # the output plus a zero we can take the gradient of
            sample = out if torch.is_tensor(out) else out[0] if isinstance(out, tuple) else out.sample
            delta["d"] = torch.zeros_like(sample, requires_grad=True)
            moved = sample + delta["d"]
            return moved if torch.is_tensor(out) else (moved, *out[1:]) if isinstance(out, tuple) else \
                type(out)(sample=moved)

        handle = model.register_forward_hook(nudge)
        loss, _ = kind.loss(model, torch.rand(2, 3, 32, 32) * 2 - 1, labels, torch.Generator().manual_seed(1),
                            Accelerator(cpu=True))
        handle.remove()
        grad = torch.autograd.grad(loss, delta["d"])[0]
        at_ignore = grad * ignore
        assert at_ignore.abs().max() == 0, f"{name} step {step}: ignore pixels carry gradient"
        assert (grad * ~ignore).abs().max() > 0  # the control: every other pixel does
