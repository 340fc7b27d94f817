"""params.yaml: one validated model; typos, wrong types and out-of-range values name the key."""
from __future__ import annotations

import shutil

import pytest
import yaml

from benchmark.config import PROFILES_DIR, ConfigError, apply_profile, load_params, parse_params
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
    (("models", "casdm", "training", "lambda_sp"), -1, r"models\.casdm\.training\.lambda_sp"),
])
def test_out_of_range_values_are_named(path, value, key):
    d = raw()
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=key):
        parse_params(d)


def test_bad_profile_leaves_params_untouched(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "broken.yaml").write_text("train: {steps: -3}\n")
    monkeypatch.setattr("benchmark.config.PROFILES_DIR", prof)
    with pytest.raises(ConfigError, match=r"train\.steps"):
        apply_profile("broken", params)
    assert params.read_text() == before
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        apply_profile("nope", params)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "params.yaml")
