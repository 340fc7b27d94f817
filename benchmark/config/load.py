"""Reading params.yaml: parse and validate it (one line per bad key, naming the file), merge a profile
or an override into it keeping its comments, write it back atomically."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from benchmark.config.schema import Params, describe

PROFILES_DIR = Path(__file__).parent / "profiles"


class ConfigError(ValueError):
    """params.yaml (or a profile) is invalid; the message names the file and the key."""


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for err in exc.errors():
        key, msg = describe(err)
        key = key or "(top level)"
        got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
        lines.append(f"  {key}: {msg}{got}")
    return "\n".join(lines)


def parse_params(data: Any, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML with every mapping's keys distinct: a key written twice (the second silently won) is an error."""


def _unique_mapping(loader: UniqueKeyLoader, node, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is written twice (first on line {seen[key] + 1}); expected each key once",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory; expected a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); expected a YAML file in UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_yaml(Path(path)), str(path))


def merge_into(node: dict, override: dict) -> dict:
    """``override`` merged into ``node`` in place (a plain dict or ruamel's commented map): mappings
    merge key by key, lists and scalars are replaced."""
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(node.get(k), dict):
            merge_into(node[k], v)
        else:
            node[k] = v
    return node


def flow_lists(node):
    """Lists of scalars as one-line YAML sequences (how params.yaml writes them), recursively."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(node, dict):
        return {k: flow_lists(v) for k, v in node.items()}
    if isinstance(node, list) and all(not isinstance(v, (dict, list)) for v in node):
        seq = CommentedSeq(node)
        seq.fa.set_flow_style()
        return seq
    return node


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in (``merge_into`` on a copy: ``base`` is left as it was)."""
    return merge_into(copy.deepcopy(base), override)


def apply_profile(name: str, params_path: Path = Path("params.yaml")) -> Params:
    """Merge ``benchmark/config/profiles/<name>.yaml`` into params.yaml (validated, then written atomically).

    Profiles edit params.yaml rather than living beside it so that DVC sees exactly which
    parameters a profile changes, and every stage stays "parameters only from params.yaml".
    """
    profile = PROFILES_DIR / f"{name}.yaml"
    if not profile.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {name!r}; expected one of {known}")
    return update_params(read_yaml(profile) or {}, params_path, f"{params_path} + {profile.name}")


def update_params(override: dict, params_path: Path = Path("params.yaml"), source: str | None = None) -> Params:
    """Deep-merge ``override`` into params.yaml, keeping its comments and order; validate, then
    replace the file atomically (a bad override leaves params.yaml untouched)."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    # as params.yaml writes them: `null`, not an empty value, and a short list on one line (`[0, 1, 2]`)
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(Path(params_path).read_text())

    merge_into(doc, flow_lists(override))
    params = parse_params(deep_merge(read_yaml(params_path), override), source or str(params_path))
    tmp = Path(params_path).with_name(Path(params_path).name + ".tmp")
    with tmp.open("w") as fh:
        rt.dump(doc, fh)
    tmp.replace(params_path)
    return params
