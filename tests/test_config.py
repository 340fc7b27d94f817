"""params.yaml: one validated model; typos, wrong types and out-of-range values name the key."""
from __future__ import annotations

import math
import shutil
import warnings

import pytest
import yaml

from benchmark.config import (
    PROFILES_DIR,
    ConfigError,
    apply_profile,
    load_params,
    parse_params,
)
from tests.conftest import REPO


def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_default_params_are_valid_and_cpu_scale():
    p = load_params(REPO / "params.yaml")
    assert p.data.resolution == 64 and p.train.preset == "cpu"
    assert set(p.presets) >= {"paper", "cpu", "tiny"}
    assert p.presets["paper"].channel_mult == [1, 1, 2, 2, 4, 4]


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_every_profile_applies_and_validates(profile, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    p = apply_profile(profile, params)
    assert load_params(params) == p
    assert "# casdm-bench parameters" in params.read_text()  # comments survive the merge


def test_paper_profile_is_the_released_run():
    params = parse_params(_merge(raw(), yaml.safe_load((PROFILES_DIR / "paper.yaml").read_text())))
    t = params.train
    assert (params.data.source, params.data.resolution, t.preset) == ("cholecseg8k", 256, "paper")
    assert (t.batch_size, t.lr, t.steps, t.warmup_steps, t.ema_decay, t.mixed_precision) == (10, 1e-4, 343500, 500,
                                                                                            0.9999, "bf16")
    assert all((m.sampling.scheduler, m.sampling.num_inference_steps) == ("ddim", 50) for m in params.models.values())
    assert params.maps.generator.training["block_out_channels"] == [128, 256, 512, 512]
    # the released run's epoch arithmetic: CholecSeg8K's 8,080 frames, the random split's own counts
    # (benchmark/data/splits.py rounds test and val frames), batch 10 with the last partial batch kept
    split = params.data.split
    train_frames = 8080 - round(split.test_fraction * 8080) - round(split.val_fraction * 8080)
    per_epoch = math.ceil(train_frames / t.batch_size)
    assert (train_frames, per_epoch) == (6868, 687)  # the run log's 6,868 / 10
    assert t.steps == 500 * per_epoch  # num_epochs 500
    for name in ("casdm", "casdm-mse", "casdm-camse"):  # CA-SP from the first epoch with index > 30
        assert params.models[name].training["sp_start_step"] == 31 * per_epoch == 21297
    assert params.evaluate.downstream.encoder_weights == "imagenet" and params.evaluate.fid.extractor == "auto"


def test_tiny_profile_is_small():
    params = parse_params(_merge(raw(), yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())))
    assert params.data.resolution == 32 and params.train.steps <= 10


def _merge(a, b):
    from benchmark.config import deep_merge

    return deep_merge(a, b)


def test_unknown_key_is_named():
    d = raw()
    d["data"]["resolutoin"] = 64
    with pytest.raises(ConfigError, match=r"data\.resolutoin: unknown key"):
        parse_params(d)


def test_wrong_type_is_named():
    d = raw()
    d["train"]["steps"] = "many"
    with pytest.raises(ConfigError, match=r"train\.steps: .*integer.*'many'"):
        parse_params(d)


@pytest.mark.parametrize("path,value,key", [
    (("data", "resolution"), 4, r"data\.resolution"),
    (("data", "resolution"), 60, r"data\.resolution: .*multiple of 8"),
    (("data", "split", "test_fraction"), 1.5, r"data\.split\.test_fraction"),
    (("data", "synthetic", "videos"), 40, r"data\.synthetic\.videos"),
    (("train", "preset"), "huge", r"train\.preset 'huge' is not in presets"),
    (("models", "casdm", "sampling", "guidance_scale"), float("inf"), r"models\.casdm\.sampling\.guidance_scale: .*finite"),
    (("models", "casdm", "sampling", "guidance_scale"), float("nan"), r"models\.casdm\.sampling\.guidance_scale"),
    (("train", "lr"), float("inf"), r"train\.lr: .*finite"),
    (("train", "weight_decay"), float("inf"), r"train\.weight_decay"),
    (("train", "adam_betas"), [0.9, 1.0], r"train\.adam_betas\.1: .*less than 1"),
    (("train", "steps"), 10 ** 9, r"train\.steps: .*less than or equal to 10000000"),
    (("diffusion", "num_train_timesteps"), 10 ** 9, r"diffusion\.num_train_timesteps: .*less than or equal to 10000"),
])
def test_out_of_range_values_are_named(path, value, key):
    d = raw()
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=key):
        parse_params(d)


def test_missing_key_is_named():
    """params.yaml is the only place a default lives: a key left out is an error, not a silent default."""
    d = raw()
    del d["train"]["warmup_steps"]
    with pytest.raises(ConfigError, match=r"train\.warmup_steps: Field required"):
        parse_params(d)


def params_check(path):
    """`casdm params check --params path` in this process (typer's runner: the command as the shell calls it,
    without a second import of torch and diffusers)."""
    from typer.testing import CliRunner

    from benchmark.cli import app

    return CliRunner().invoke(app, ["params", "check", "--params", str(path)])


def test_a_models_training_block_is_checked_by_its_kind(tmp_path):
    """Out of range, missing or unknown options name the key, in `casdm params check` too."""
    from benchmark.kinds.registry import model_options

    for value, message in ((-1, r"models\.casdm\.training\.lambda_sp: Input should be greater than or equal to 0"),
                           (None, r"models\.casdm\.training\.lambda_sp: Input should be a valid number")):
        d = raw()
        d["models"]["casdm"]["training"]["lambda_sp"] = value
        with pytest.raises(ValueError, match=message):
            model_options(parse_params(d), "casdm")
    d = raw()
    del d["models"]["controlnet"]["training"]["base_fraction"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    out = params_check(tmp_path / "params.yaml")
    assert out.exit_code == 1 and "models.controlnet.training.base_fraction: Field required" in out.stderr


def test_bad_profile_leaves_params_untouched(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "broken.yaml").write_text("train: {steps: -3}\n")
    monkeypatch.setattr("benchmark.config.load.PROFILES_DIR", prof)
    with pytest.raises(ConfigError, match=r"train\.steps"):
        apply_profile("broken", params)
    assert params.read_text() == before
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        apply_profile("nope", params)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "params.yaml")


def test_auto_precision_is_bf16_only_where_the_cpu_does_bf16_in_hardware(tmp_path, monkeypatch):
    import torch

    from benchmark import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    monkeypatch.setattr(devices, "CPUINFO", info)
    assert devices.mixed_precision("auto") == "no"  # AVX2 only: bf16 would be emulated (28x slower)
    with pytest.warns(RuntimeWarning, match="no bf16 in hardware"):
        assert devices.mixed_precision("bf16") == "bf16"  # asked for: runs, and says it is slower here
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert devices.mixed_precision("auto") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # hardware bf16: no warning
        assert devices.mixed_precision("bf16") == "bf16" and devices.mixed_precision("no") == "no"  # explicit wins
    monkeypatch.setattr(devices, "CPUINFO", tmp_path / "absent")
    assert devices.cpu_flags() == set() and devices.mixed_precision("auto") == "no"  # unreadable: the safe choice


def test_a_preset_deeper_than_the_resolution_allows_is_refused():
    d = raw()
    d["presets"]["cpu"]["channel_mult"], d["data"]["resolution"] = [1, 1, 2, 2, 4], 40  # five levels: 40 / 16
    with pytest.raises(ConfigError, match=r"data\.resolution 40: preset 'cpu' halves it 4 times .*multiple of 16"):
        parse_params(d)
    d = raw()
    d["train"]["preset"], d["data"]["resolution"] = "paper", 16  # six levels: halves it five times
    with pytest.raises(ConfigError, match=r"data\.resolution 16: preset 'paper' halves it 5 times .*multiple of 32"):
        parse_params(d)


def test_ca_boost_is_bounded_and_its_class_names_are_checked(tmp_path):
    from benchmark.kinds.registry import model_options

    for value in (float("nan"), -100, 0, 1000):
        d = raw()
        d["models"]["casdm"]["training"]["ca_boost"] = {"Blood": value}
        with pytest.raises(ValueError, match=r"models\.casdm\.training\.ca_boost\.Blood"):
            model_options(parse_params(d), "casdm")
    d = raw()
    d["models"]["casdm"]["training"]["ca_boost"] = {"Blod": 1.5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    out = params_check(tmp_path / "params.yaml")
    assert out.exit_code == 1 and "models.casdm.training.ca_boost" in out.stderr and "Blod" in out.stderr, out.stderr


def test_a_key_written_twice_a_directory_and_a_non_utf8_file_are_one_line_each(tmp_path):
    from benchmark.config import load_params

    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: not valid YAML: .*key 'lr' is written twice \(first on line 2\)"):
        load_params(twice)
    with pytest.raises(ConfigError, match=r": a directory; expected a YAML file"):
        load_params(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("report: {title: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text"):
        load_params(latin)


def test_a_profile_changes_only_its_own_lines(tmp_path):
    """`casdm params profile` keeps params.yaml as written: `null` stays `null` (ruamel wrote an empty
    value), a list stays on its line with its comment; only the profile's keys change."""
    from benchmark.config import apply_profile
    from tests.conftest import REPO

    target = tmp_path / "params.yaml"
    target.write_text((REPO / "params.yaml").read_text())
    apply_profile("cpu-seeds", target)
    before, after = (REPO / "params.yaml").read_text().splitlines(), target.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and len(changed) == 1, changed
    assert changed[0][1].startswith("  seeds: [0, 1, 2]") and "# training seeds" in changed[0][1]


def test_the_cli_says_its_version_and_lists_the_profiles():
    from typer.testing import CliRunner

    from benchmark.cli import app

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.startswith("casdm-bench ") and "commit" in out.output
    for args in (["params", "profile"], ["params", "profile", "--list"], ["params", "profile", "tiny", "--list"]):
        listed = CliRunner().invoke(app, [*args, "--params", "no-such-params.yaml"])  # --list changes nothing
        assert listed.exit_code == 0, listed.output
        names = {line.split()[0] for line in listed.output.splitlines() if line.strip()}
        assert names >= {"tiny", "cpu-long", "cpu-seeds", "paper"}
