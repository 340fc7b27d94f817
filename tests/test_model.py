"""SPADE U-Net and CASDMPipeline: shapes, presets, save/load, guidance, SPADE reuse."""
from __future__ import annotations

import pytest
import torch

from benchmark.config import load_params
from casdm import CASDMPipeline, SPADEUNet
from casdm.pipeline import to_onehot
from casdm.schedulers import make_scheduler
from casdm.unet import unet_from_preset
from tests.conftest import REPO, tiny_params

DIFFUSION = tiny_params().diffusion  # params.yaml's schedule (no defaults in code)


def small(learn_sigma=False, seed=0):
    torch.manual_seed(seed)
    m = SPADEUNet(sample_size=16, num_classes=5, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), head_channels=8, spade_hidden=8, learn_sigma=learn_sigma)
    for p in m.parameters():  # non-zero outputs so comparisons mean something
        torch.nn.init.normal_(p, std=0.05)
    return m


def labels(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, 5, (b, 16, 16), generator=g)
    lab[:, 0] = 255
    return lab


def test_every_preset_builds_with_expected_size():
    params = load_params(REPO / "params.yaml")
    sizes = {}
    for name, preset in params.presets.items():
        res = 256 if name == "paper" else params.data.resolution
        with torch.device("meta"):
            model = unet_from_preset(preset, res, 13)
        sizes[name] = sum(p.numel() for p in model.parameters())
    assert 640e6 < sizes["paper"] < 665e6  # the spec's ~653 M
    assert sizes["cpu"] < 10e6 and sizes["tiny"] < sizes["cpu"]


def test_encoder_is_blind_to_the_map_and_decoder_is_not():
    m = small()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    a = to_onehot(labels(seed=0), 5)
    b = to_onehot(labels(seed=1), 5)
    out_a, out_b = m(x, t, a), m(x, t, b)
    assert not torch.allclose(out_a.sample, out_b.sample)
    spade = [n for n, _ in m.named_modules() if n.endswith("norm1") and "down" in n]
    assert spade and all(isinstance(dict(m.named_modules())[n], torch.nn.GroupNorm) for n in spade)


def test_learned_sigma_doubles_output_channels():
    m = small(learn_sigma=True)
    out = m(torch.randn(1, 3, 16, 16), 10, to_onehot(labels(1), 5)).sample
    assert out.shape == (1, 6, 16, 16)


def test_gradient_checkpointing_gives_the_same_gradients():
    m = small()
    x, t, oh = torch.randn(2, 3, 16, 16), torch.tensor([5, 9]), to_onehot(labels(), 5)
    m(x, t, oh).sample.square().mean().backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.enable_gradient_checkpointing()
    m(x, t, oh).sample.square().mean().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(ref, m.parameters()))


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "ddpm"])
def test_spade_reuse_is_exact(sampler):
    pipe = CASDMPipeline(small(), make_scheduler(sampler, DIFFUSION))
    kw = dict(num_inference_steps=4, output_type="pt")
    a = pipe(labels(), generator=torch.Generator().manual_seed(0), spade_reuse=True, **kw).images
    b = pipe(labels(), generator=torch.Generator().manual_seed(0), spade_reuse=False, **kw).images
    assert torch.equal(a, b)


def test_pipeline_keeps_the_scheduler_it_is_given():
    for name, cls in (("ddim", "DDIMScheduler"), ("dpmsolver++", "DPMSolverMultistepScheduler"),
                      ("ddpm", "DDPMScheduler")):
        pipe = CASDMPipeline(small(), make_scheduler(name, DIFFUSION))
        pipe(labels(1), num_inference_steps=3, output_type="pt")
        assert type(pipe.scheduler).__name__ == cls


def test_guidance_scale_one_equals_unguided_and_other_scales_differ():
    pipe = CASDMPipeline(small(), make_scheduler("ddpm", DIFFUSION))
    run = lambda s, cfg=None: pipe(labels(), 4, guidance_scale=s, generator=torch.Generator().manual_seed(1),
                                   output_type="pt", classifier_free=cfg).images
    unguided = run(1.0, cfg=False)
    guided_at_one = run(1.0, cfg=True)  # conditional and null halves in one batch, combined with s = 1
    assert torch.allclose(guided_at_one, unguided, atol=1e-5)
    assert not torch.allclose(run(1.5), unguided, atol=1e-3)
    assert torch.isfinite(unguided).all() and unguided.min() >= 0 and unguided.max() <= 1


def test_save_and_load_round_trip(tmp_path):
    m = small(learn_sigma=True)
    m.save_pretrained(tmp_path / "unet")
    m2 = SPADEUNet.from_pretrained(tmp_path / "unet")
    x, oh = torch.randn(1, 3, 16, 16), to_onehot(labels(1), 5)
    assert torch.equal(m(x, 7, oh).sample, m2(x, 7, oh).sample)
    pipe = CASDMPipeline(m, make_scheduler("dpmsolver++", DIFFUSION))
    pipe.save_pretrained(tmp_path / "pipe")
    pipe2 = CASDMPipeline.from_pretrained(tmp_path / "pipe")
    assert type(pipe2.scheduler).__name__ == "DPMSolverMultistepScheduler"
    a = pipe(labels(1), 3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = pipe2(labels(1), 3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(a, b)


def test_zero_snr_v_prediction_option_samples():
    cfg = DIFFUSION.model_copy(update={"zero_snr": True, "prediction_type": "v_prediction"})
    for name in ("ddim", "dpmsolver++", "ddpm"):
        sched = make_scheduler(name, cfg)
        assert sched.config.prediction_type == "v_prediction"
        assert float(sched.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR
        out = CASDMPipeline(small(), sched)(labels(1), 3, output_type="pt").images
        assert torch.isfinite(out).all()


def test_wrong_number_of_classes_is_an_error():
    pipe = CASDMPipeline(small(), make_scheduler("ddim", DIFFUSION))
    with pytest.raises(ValueError, match="expects 5"):
        pipe(torch.zeros(1, 7, 16, 16), 2)


def test_a_saved_pipeline_loads_in_a_fresh_interpreter_in_three_lines(tmp_path):
    """What the README shows: `from casdm import CASDMPipeline; CASDMPipeline.from_pretrained(folder)`
    in a process that imported nothing else (model_index.json names casdm.unet, which diffusers loads
    only once it is imported)."""
    import subprocess
    import sys

    from casdm.pipeline import CASDMPipeline
    from casdm.schedulers import make_scheduler
    from casdm.unet import SPADEUNet
    from tests.conftest import cli_env, tiny_params

    unet = SPADEUNet(sample_size=16, num_classes=4, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(), head_channels=8, spade_hidden=8)
    CASDMPipeline(unet, make_scheduler("ddpm", tiny_params().diffusion)).save_pretrained(tmp_path / "p")
    code = ("from casdm import CASDMPipeline; import torch\n"
            f"pipe = CASDMPipeline.from_pretrained({str(tmp_path / 'p')!r})\n"
            "print(pipe(torch.zeros(1, 16, 16, dtype=torch.long), 2, output_type='pt').images.shape)")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([1, 3, 16, 16])" in out.stdout


def test_the_frozen_copy_stops_where_ca_sp_stops():
    """``feature_levels``: the same features as the full forward pass, no decoder run past them."""
    from casdm.unet import SPADEUNet

    torch.manual_seed(0)
    net = SPADEUNet(sample_size=16, num_classes=4, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                    attention_resolutions=(), head_channels=8, spade_hidden=8).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    seg = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 16, 16)), 4).permute(0, 3, 1, 2).float()
    full_out, full = net(x, t, seg, return_features=True, return_dict=False)
    for k in (1, 2):
        out, part = net(x, t, seg, return_features=True, return_dict=False, feature_levels=k)
        assert out is None and len(part) == k
        assert all(torch.equal(a, b) for a, b in zip(part, full[:k]))
    calls = []
    hook = net.conv_out.register_forward_hook(lambda *a: calls.append(1))
    net(x, t, seg, return_features=True, return_dict=False, feature_levels=1)
    assert calls == []  # the output head did not run
    net(x, t, seg, return_features=True, return_dict=False)
    assert calls == [1]  # the control: a full pass runs it
    hook.remove()
    assert torch.isfinite(full_out).all()
