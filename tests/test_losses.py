"""CA-MSE against the spec's formula, and a CA-SP term that really trains the model."""
from __future__ import annotations

import torch

from casdm.losses import ca_mse, ca_sp, class_pixel_weights, frozen_copy, mse, predict_x0
from casdm.pipeline import to_onehot
from casdm.schedulers import make_scheduler
from casdm.unet import SPADEUNet
from tests.conftest import tiny_params

DIFFUSION = tiny_params().diffusion  # params.yaml's schedule (no defaults in code)


def hand_ca_mse(pred, target, labels, K, boost=None, alpha=1.0):
    """The spec written out with loops: per image, w_c = (N/n_c)^alpha * boost_c, normalised over
    present classes; loss = (1/(B*C*H*W)) * sum_p w_{class(p)} * err_p."""
    B, C, H, W = pred.shape
    total = 0.0
    for b in range(B):
        raw = {}
        for c in range(K):
            n = int((labels[b] == c).sum())
            if n:
                raw[c] = (H * W / n) ** alpha * (1.0 if boost is None else boost[c])
        s = sum(raw.values())
        for y in range(H):
            for x in range(W):
                c = int(labels[b, y, x])
                if c in raw:
                    total += raw[c] / s * float(((pred[b, :, y, x] - target[b, :, y, x]) ** 2).sum())
    return total / (B * C * H * W)


def test_ca_mse_equals_the_spec_formula_on_hand_built_masks():
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, :4] = 1
    labels[0, 6, 6] = 2  # a one-pixel class
    labels[1, :, :2] = 3
    labels[1, 0, 0] = 255  # ignore
    pred, target = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    boost = torch.ones(4)
    boost[2] = 1.5
    oh = to_onehot(labels, 4)
    for alpha in (1.0, 0.5):
        got = ca_mse(pred, target, oh, boost=boost, alpha=alpha).item()
        assert abs(got - hand_ca_mse(pred, target, labels, 4, boost, alpha)) < 1e-6
    assert ca_mse(pred, target, oh).item() != mse(pred, target).item()


def test_one_pixel_class_at_256px_under_bf16_autocast_is_finite():
    labels = torch.full((1, 256, 256), 2, dtype=torch.long)
    labels[0, 100, 100] = 8
    oh = to_onehot(labels, 13).to(torch.bfloat16)
    pred = torch.randn(1, 3, 256, 256, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = class_pixel_weights(oh)
        loss = ca_mse(pred, torch.zeros_like(pred), oh)
    assert w.dtype == torch.float32 and torch.isfinite(w).all() and torch.isfinite(loss)
    # every present class gets the same total weight: the single pixel weighs as much as all the liver
    single = w[0, 0, 100, 100].item()
    assert abs(single - 65536 / (65536 + 65536 / 65535)) < 1e-6
    assert abs(w.sum().item() - 2 * single) < 1e-3


def test_balanced_variant_has_mean_pixel_weight_one_per_image():
    labels = torch.randint(0, 5, (3, 16, 16))
    labels[0] = 0
    labels[0, 0, 0] = 4
    w = class_pixel_weights(to_onehot(labels, 5), variant="balanced")
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(3), atol=1e-6)
    paper = class_pixel_weights(to_onehot(labels, 5), variant="paper")
    # same balance inside an image, different scale across images
    ratio = w / paper  # one factor per image
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), rtol=1e-5)
    assert paper[0].mean() < 0.1 < paper[1].mean()


def test_ignore_pixels_contribute_nothing():
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[:, :2] = 255
    pred, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    oh = to_onehot(labels, 3)
    base = ca_mse(pred, target, oh)
    pred2 = pred.clone()
    pred2[:, :, :2] = 1e6  # garbage on ignore pixels only
    assert torch.equal(ca_mse(pred2, target, oh), base)
    assert class_pixel_weights(oh)[:, :, :2].abs().sum() == 0
    assert torch.equal(mse(pred2, target, ignore=labels == 255), mse(pred, target, ignore=labels == 255))
    explicit = torch.zeros(2, 8, 8, dtype=torch.bool)
    explicit[:, 7] = True
    assert class_pixel_weights(oh, ignore=explicit)[:, :, 7].abs().sum() == 0


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    m = SPADEUNet(sample_size=16, num_classes=4, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), head_channels=16, spade_hidden=8)
    for p in m.parameters():  # the zero-initialised outputs would hide every gradient path
        torch.nn.init.normal_(p, std=0.1)
    return m


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_ca_sp_changes_the_online_models_gradients():
    model = tiny_unet()
    frozen = frozen_copy(model)
    sched = make_scheduler("ddpm", DIFFUSION)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (2, 16, 16), generator=g)
    oh = to_onehot(labels, 4)
    x0 = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([50, 300])
    x_t = sched.add_noise(x0, noise, t)

    def losses(lam):
        eps = model(x_t, t, oh).sample
        w = class_pixel_weights(oh)
        l1 = ca_mse(eps, noise, oh, weights=w)
        sp = ca_sp(frozen, x0, predict_x0(sched, x_t, eps, t), oh, w, sched, torch.Generator().manual_seed(5))
        return l1 + lam * sp, sp

    g_ca = grads(model, losses(0.0)[0])
    total, sp = losses(1.0)
    g_both = grads(model, total)
    _, sp_only = losses(1.0)
    g_sp = grads(model, sp_only)
    assert sp.item() > 0 and sp.requires_grad
    assert g_sp.abs().sum() > 0  # the SP term alone sends gradient into the online model
    assert not torch.allclose(g_ca, g_both)  # and changes the total gradient
    assert all(p.grad is None for p in frozen.parameters())  # f* itself never trains


def test_ca_sp_weights_follow_the_map():
    """Class-aware: making a region's class rare (one small class) must change the SP value."""
    model = tiny_unet()
    frozen = frozen_copy(model)
    sched = make_scheduler("ddpm", DIFFUSION)
    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    x0_hat = x0 + 0.3 * torch.randn(1, 3, 16, 16)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :8] = 1
    oh = to_onehot(labels, 4)
    uniform = torch.ones(1, 1, 16, 16)
    a = ca_sp(frozen, x0, x0_hat, oh, uniform, sched, torch.Generator().manual_seed(0))
    b = ca_sp(frozen, x0, x0_hat, oh, class_pixel_weights(oh) * torch.linspace(0.1, 2, 16).view(1, 1, 16, 1),
              sched, torch.Generator().manual_seed(0))
    assert a.item() != b.item()


def test_min_snr_weights_clip_the_x0_error_at_gamma_for_both_prediction_types():
    from casdm.losses import timestep_weights

    t = torch.tensor([0, 200, 500, 999])
    eps = make_scheduler("ddpm", DIFFUSION.model_copy(update={"prediction_type": "epsilon", "zero_snr": False}))
    abar = eps.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    w = timestep_weights(eps, t, 5.0)
    assert torch.allclose(w.double(), snr.clamp(max=5.0) / snr, rtol=1e-5)
    assert w[0] < 0.01 and w[-1] == 1.0  # low-noise steps (huge SNR) damped; noisy ones untouched
    v = make_scheduler("ddpm", DIFFUSION.model_copy(update={"prediction_type": "v_prediction", "zero_snr": True}))
    wv = timestep_weights(v, t, 5.0)
    snr_v = v.alphas_cumprod[t].double() / (1 - v.alphas_cumprod[t].double())
    assert torch.allclose(wv.double(), snr_v.clamp(max=5.0) / (snr_v + 1), rtol=1e-5)
    assert wv[-1] == 0.0  # zero terminal SNR: the last step weighs nothing (its x0 error is undefined)
    assert timestep_weights(eps, t, None) is None
    # the weights scale each image's share of the loss, and nothing else
    pred, target = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    per_image = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(mse(pred, target, sample_weights=w), (per_image * w).mean(), rtol=1e-5)
    assert torch.allclose(mse(pred, target, sample_weights=torch.ones(4)), mse(pred, target))


def test_offset_noise_shifts_each_image_channel_by_one_draw():
    from casdm.losses import draw_noise

    g = torch.Generator().manual_seed(0)
    plain = draw_noise((64, 3, 32, 32), g)
    g = torch.Generator().manual_seed(0)
    shifted = draw_noise((64, 3, 32, 32), g, offset=0.5)
    means = (shifted - plain).mean(dim=(2, 3))
    assert torch.allclose(shifted - plain, means[..., None, None].expand_as(plain), atol=1e-6)  # constant per channel
    assert 0.35 < means.std().item() < 0.65  # N(0, 0.5^2) per image and channel


class IdentityFeatures(torch.nn.Module):
    """A 'frozen denoiser' whose one feature level is its input: CA-SP becomes a hand computation."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x, t, segmap, return_features=True, return_dict=False, feature_levels=None):
        return x, [x]


def test_ca_sp_is_weighted_by_the_same_timestep_weights_as_ca_mse():
    """Two images, two drawn timesteps t': CA-SP = mean_b w(t'_b) * mean(pix_w * abar(t'_b) * (x0_hat - x0)^2)
    (the same noise e' re-noises both, so only sqrt(abar) (x0_hat - x0) is left of the difference),
    with w the min-SNR weights CA-MSE uses at its own t."""
    from casdm.draws import as_draws
    from casdm.losses import timestep_weights

    sched = make_scheduler("ddpm", DIFFUSION.model_copy(update={"prediction_type": "v_prediction", "zero_snr": True}))
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    x0_hat = x0 + torch.linspace(0.1, 0.6, 2).view(2, 1, 1, 1) * torch.randn(2, 3, 8, 8)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :2] = 1
    pix = class_pixel_weights(to_onehot(labels, 2))
    frozen = IdentityFeatures()
    t2 = as_draws(torch.Generator().manual_seed(3)).randint(sched.config.num_train_timesteps, (2,))
    assert t2[0] != t2[1]
    abar = sched.alphas_cumprod[t2].double()
    per_image = [float((pix[b] * abar[b] * (x0_hat[b] - x0[b]).double() ** 2).mean()) for b in range(2)]
    w = timestep_weights(sched, t2, 5.0).double()
    weighted = ca_sp(frozen, x0, x0_hat, to_onehot(labels, 2), pix, sched, torch.Generator().manual_seed(3),
                     snr_gamma=5.0)
    assert abs(float(weighted) - float((w[0] * per_image[0] + w[1] * per_image[1]) / 2)) < 1e-6
    plain = ca_sp(frozen, x0, x0_hat, to_onehot(labels, 2), pix, sched, torch.Generator().manual_seed(3))
    assert abs(float(plain) - sum(per_image) / 2) < 1e-6  # snr_gamma None: the loss as published
    assert abs(float(weighted) - float(plain)) > 1e-4  # the control: the weighting changes the value
