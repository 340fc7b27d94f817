"""Where the stages run and at what precision: one answer for the trainer, the sampler and the evaluators."""
from __future__ import annotations

import torch


def device() -> str:
    """Where the stages run: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def mixed_precision(setting: str) -> str:
    """A ``mixed_precision`` setting (train or sample) with ``auto`` resolved: bf16 on a GPU that has it, else no."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
