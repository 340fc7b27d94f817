"""The Stable-Diffusion ControlNet route, on a tiny random checkpoint the test writes to disk
(the real one is a local path on a GPU box; nothing is downloaded either way)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from benchmark.data.classes import CHOLECSEG8K
from benchmark.kinds.registry import make_kind
from tests.conftest import cli_env, tiny_params


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd")
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz-,"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:  # a character-level BPE: no merges
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=32)
    tok.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=32, eos_token_id=1,
                                 bos_token_id=0, pad_token_id=1)).save_pretrained(root / "text_encoder")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=32).save_pretrained(root / "vae")
    UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         norm_num_groups=8, attention_head_dim=2).save_pretrained(root / "unet")
    # SD 2.x-like: scaled_linear betas and v-prediction, neither of them params.yaml's diffusion: section
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                  clip_sample=False).save_pretrained(root / "scheduler")
    return root


def sd_params(root):
    return tiny_params(models={"controlnet": {"kind": "controlnet-sd", "training": {"pretrained": str(root)}}})


def test_only_the_controlnet_trains_and_the_pipeline_samples_maps(tiny_sd, tmp_path):
    kind = make_kind(sd_params(tiny_sd), "controlnet", CHOLECSEG8K)
    model = kind.build()
    labels = torch.randint(0, 13, (2, 32, 32))
    labels[0] = 2
    assert model.prompts(labels[:1]) == ["liver"]
    loss, terms = kind.loss(model, torch.rand(2, 3, 32, 32) * 2 - 1, labels, torch.Generator().manual_seed(0),
                            Accelerator(cpu=True))
    loss.backward()
    assert "controlnet_mse" in terms and torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.controlnet.parameters())
    assert all(p.grad is None for m in (model.unet, model.vae, model.text_encoder) for p in m.parameters())
    images = kind.pipeline(model)(labels, 2, 1.0, generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    kind.export_raw(model, tmp_path)
    kind.export(model, tmp_path)
    again = kind.load_pipeline(tmp_path)
    for a, b in zip(model.controlnet.parameters(), again.pipe.controlnet.parameters()):
        assert torch.equal(a, b)


def test_the_checkpoints_schedule_and_prediction_type_are_honoured(tiny_sd, monkeypatch):
    """Training noise, target and every sampler follow the checkpoint's scheduler/, not params.yaml."""
    from diffusers import DDIMScheduler

    import casdm.objective as sd  # where every kind's training target is computed

    ref = DDIMScheduler.from_pretrained(tiny_sd / "scheduler")
    kind = make_kind(sd_params(tiny_sd), "controlnet", CHOLECSEG8K)
    assert kind.noise_scheduler.config.prediction_type == "v_prediction"
    assert torch.allclose(kind.noise_scheduler.betas, ref.betas) and not torch.allclose(
        kind.noise_scheduler.betas, make_kind(tiny_params(), "casdm", CHOLECSEG8K).noise_scheduler.betas)
    seen = []
    real = sd.training_target
    monkeypatch.setattr(sd, "training_target", lambda sched, x0, noise, t: seen.append(
        (sched.config.prediction_type, torch.equal(real(sched, x0, noise, t), sched.get_velocity(x0, noise, t))))
        or real(sched, x0, noise, t))
    model = kind.build()
    kind.loss(model, torch.rand(2, 3, 32, 32) * 2 - 1, torch.randint(0, 13, (2, 32, 32)),
              torch.Generator().manual_seed(0), Accelerator(cpu=True))
    assert seen == [("v_prediction", True)]  # the loss's target is the checkpoint's velocity
    for name in ("ddim", "ddpm", "dpmsolver++"):
        kind.sampling = kind.sampling.model_copy(update={"scheduler": name})
        sched = kind.pipeline(model).pipe.scheduler
        assert sched.config.prediction_type == "v_prediction" and torch.allclose(sched.betas, ref.betas), name


def test_missing_or_incomplete_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"training\.pretrained: required"):
        make_kind(tiny_params(models={"controlnet": {"kind": "controlnet-sd"}}), "controlnet", CHOLECSEG8K)
    (tmp_path / "unet").mkdir()
    with pytest.raises(ValueError, match=r"training\.pretrained: .* lacks \['vae', 'text_encoder', 'tokenizer', 'scheduler'\]"):
        make_kind(sd_params(tmp_path), "controlnet", CHOLECSEG8K)
    p = tiny_params(models={"controlnet": {"training": {"pretrained": str(tmp_path)}}})
    with pytest.raises(ValueError, match="set kind: controlnet-sd"):
        make_kind(p, "controlnet", CHOLECSEG8K)


def test_the_shared_trainer_runs_the_sd_route(tiny_sd, tmp_path, prepared, monkeypatch):
    import mlflow

    from benchmark.engine.sample import sample
    from benchmark.engine.trainer import RunPaths, train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    p = tiny_params(train={"steps": 2}, runtime={"checkpoint_every": 1, "sample_every": 2},
                    models={"controlnet": {"kind": "controlnet-sd", "training": {"pretrained": str(tiny_sd)},
                                           "sampling": {"scheduler": "ddim", "num_inference_steps": 2}}})
    rp = RunPaths(data=prepared, checkpoints=tmp_path / "ckpt", model=tmp_path / "model",
                  metrics=tmp_path / "m.json", plot=tmp_path / "p.csv")
    m = train(p, "controlnet", rp)
    mlflow.end_run()
    assert m["steps"] == 2 and (rp.model / "controlnet" / "config.json").exists()
    r = sample(p, "controlnet", rp.model, prepared, tmp_path / "samples", tmp_path / "sample.json")
    assert r["test_images"] == 8 and len(list((tmp_path / "samples" / "test").glob("*.png"))) == 8
    assert r["train_images"] == 8 and len(list((tmp_path / "samples" / "train").glob("*.png"))) == 8
    # cold, in a fresh interpreter, with diffusers' own loaders: the ControlNet on the user's checkpoint, the
    # saved sampler, steps and guidance; pipe(segmap) draws the sample stage's own image pixel for pixel
    manifest = json.loads((tmp_path / "samples" / "manifest.json").read_text())
    rec = next(r for r in manifest["images"] if r["split"] == "test")
    script = ("import numpy as np, torch\nfrom PIL import Image\nfrom baselines.controlnet_sd import MapToImage\n"
              f"pipe = MapToImage.from_pretrained({str(rp.model)!r})\n"
              f"segmap = torch.from_numpy(np.asarray(Image.open({rec['map']!r}))).long()[None]\n"
              f"image = pipe(segmap, generator=[torch.Generator().manual_seed({rec['seed']})]).images\n"
              "Image.fromarray((image[0].permute(1, 2, 0).numpy().clip(0, 1) * 255).round().astype(np.uint8))"
              ".save('cold.png')\n"
              "print(pipe.num_inference_steps, pipe.guidance_scale, type(pipe.pipe.scheduler).__name__)")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "1.0", "DDIMScheduler"]
    made, drawn = (np.asarray(Image.open(f)) for f in (tmp_path / "cold.png", tmp_path / "samples" / rec["image"]))
    assert made.shape == drawn.shape and np.array_equal(made, drawn), np.abs(made.astype(int) - drawn).max()
    # the checkpoint moved: the recorded path fails naming the folder, pretrained= points at the new one
    moved = subprocess.run([sys.executable, "-c", "from baselines.controlnet_sd import MapToImage\n"
                            f"MapToImage.from_pretrained({str(rp.model)!r}, pretrained='/nonexistent/sd')"],
                           cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert moved.returncode == 1 and "/nonexistent/sd not found" in moved.stderr.splitlines()[-1]
