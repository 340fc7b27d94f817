"""ControlNet baseline: the two-phase recipe, the class-list prompt, text encoders failing fast."""
from __future__ import annotations

import time

import pytest
import torch
from accelerate import Accelerator

from benchmark.data.classes import CHOLECSEG8K
from benchmark.kinds.registry import make_kind
from casdm.text import TextEncoderError, encode_phrases
from tests.conftest import tiny_params


def kind_and_model(**options):
    p = tiny_params(train={"steps": 10}, models={"controlnet": {"training": options}})
    kind = make_kind(p, "controlnet", CHOLECSEG8K)
    return kind, kind.build()


def grads(model, kind, labels):
    model.zero_grad()
    loss, terms = kind.loss(model, torch.rand(2, 3, 32, 32) * 2 - 1, labels, torch.Generator().manual_seed(0),
                            Accelerator(cpu=True))
    loss.backward()
    has = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    return has(model.unet), has(model.controlnet), terms


def test_base_first_then_controlnet_with_the_base_frozen():
    kind, model = kind_and_model(text_encoder="learned", base_fraction=0.5)
    labels = torch.randint(0, 13, (2, 32, 32))
    assert kind.switch == 5
    assert not kind.on_step(0, model)
    unet_g, ctrl_g, terms = grads(model, kind, labels)
    assert unet_g and not ctrl_g and "base_mse" in terms
    assert kind.on_step(5, model)  # the switch: the EMA must restart
    base = model.unet.state_dict()
    copied = {k: v for k, v in model.controlnet.state_dict().items() if k in base}
    assert copied and all(torch.equal(v, base[k]) for k, v in copied.items())  # initialised from the base
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 300])
    model.use_control = False
    plain = model(x, t, labels)
    model.use_control = True
    assert torch.allclose(model(x, t, labels), plain, atol=1e-5)  # zero convolutions: no change yet
    unet_g, ctrl_g, terms = grads(model, kind, labels)
    assert ctrl_g and not unet_g and "controlnet_mse" in terms
    assert not kind.on_step(6, model)  # idempotent after the switch (a resumed run does not re-copy)


def test_class_list_prompt_zeroes_absent_classes_and_colours_the_map():
    kind, model = kind_and_model(text_encoder="learned")
    labels = torch.full((1, 8, 8), 2)
    labels[0, 0, 0] = 8
    labels[0, 1, 1] = 255
    tokens = model.prompt(labels)[0]
    assert tokens.shape == (13, 64)
    assert tokens[2].abs().sum() > 0 and tokens[8].abs().sum() > 0
    assert tokens[[c for c in range(13) if c not in (2, 8)]].abs().sum() == 0
    ctrl = model.prompt.control_image(labels)[0]
    assert torch.allclose(ctrl[:, 0, 0] * 255, torch.tensor([255.0, 255, 0]))  # cystic duct's colour
    assert torch.allclose(ctrl[:, 1, 1], torch.ones(3))  # ignore: white


def test_minilm_embeddings_are_real_and_frozen():
    kind, model = kind_and_model(text_encoder="minilm")
    w = model.prompt.embed.weight
    assert w.shape == (13, 384) and not w.requires_grad
    e = encode_phrases("minilm", ["liver", "liver", "grasper"])
    assert torch.allclose(e[0], e[1]) and not torch.allclose(e[0], e[2])


def test_offline_hub_id_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(TextEncoderError, match="HF_HUB_OFFLINE=1"):
        encode_phrases("clip:openai/clip-vit-base-patch32", ["liver"])
    assert time.perf_counter() - t0 < 1.0


def test_bad_options_are_named():
    p = tiny_params(models={"controlnet": {"training": {"text_encodr": "minilm"}}})
    with pytest.raises(ValueError, match=r"models\.controlnet\.training\.text_encodr: unknown key"):
        make_kind(p, "controlnet", CHOLECSEG8K)
    p = tiny_params(models={"controlnet": {"training": {"text_encoder": "bert"}}})
    with pytest.raises(TextEncoderError, match="unknown text encoder 'bert'"):
        make_kind(p, "controlnet", CHOLECSEG8K).build()


def test_guidance_drops_the_class_list_but_keeps_the_map():
    torch.manual_seed(0)  # weights, maps and inputs below: the same draw whatever ran before in the process
    kind, model = kind_and_model(text_encoder="learned")
    for p in model.parameters():  # non-zero outputs everywhere (zero convolutions would hide the control)
        torch.nn.init.normal_(p, std=0.05)
    model.use_control = True
    labels = torch.randint(0, 13, (2, 32, 32))
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 500])
    no_text = model(x, t, labels, drop_text=True)
    other_map = model(x, t, torch.randint(0, 13, (2, 32, 32)), drop_text=True)
    assert not torch.allclose(no_text, other_map)  # the control image still steers the null branch
    assert not torch.allclose(no_text, model(x, t, labels))
    pipe = kind.pipeline(model)
    run = lambda s: pipe(labels, 2, s, generator=torch.Generator().manual_seed(0)).images
    guided = run(1.5)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, run(1.0))
