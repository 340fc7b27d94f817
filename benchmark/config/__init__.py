"""params.yaml as one validated model: ``schema`` (the sections), ``load`` (reading, profiles,
overrides), ``profiles/`` (tiny, cpu-long, paper). Stages import what they need from here."""
from benchmark.config.load import (PROFILES_DIR, ConfigError, apply_profile, deep_merge, load_params, merge_into,
                                   parse_params, read_yaml, update_params)
from benchmark.config.schema import (DataConfig, DiffusionConfig, ModelEntry, Params, SampleConfig, SamplingRecipe,
                                     SearchParam, SplitConfig, SyntheticConfig, TrainConfig, UNetPreset, describe)

__all__ = ["PROFILES_DIR", "ConfigError", "apply_profile", "deep_merge", "load_params", "merge_into", "parse_params",
           "read_yaml", "update_params", "DataConfig", "DiffusionConfig", "ModelEntry", "Params", "SampleConfig",
           "SamplingRecipe", "SearchParam", "SplitConfig", "SyntheticConfig", "TrainConfig", "UNetPreset", "describe"]
