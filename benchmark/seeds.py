"""The one seed scheme of the suite: every random draw that must be reproducible (a training step,
one sampled image, one generated map) gets its own seed from (base seed, stream, index).

Why streams: the images of test maps, of training maps, of generated maps and the extra draws for
diversity must never share noise, and none of them may depend on the batch size. (A training step's
CA-SP draws are the method's own stream: ``casdm.objective.CA_SP_NOISE``.)
"""
from __future__ import annotations

from pathlib import Path

BASE = 1_000_003  # a prime: base seeds 0, 1, 2 ... start far apart
TEST_IMAGES, TRAIN_IMAGES = 0, 500_000  # the sample stage's two splits
DIVERSITY_MAPS, MAP_IMAGES = 700_000, 900_000  # the maps stage: repeat draws, images of generated maps
RANK = 7_919_000_003  # per data-parallel rank, so rank 0 draws the single-process seeds
TRAINING = 104_729_000_017  # per training seed of the weights that sample: seed 0 draws the one-seed images


def image_seed(seed: int, index: int, stream: int, training_seed: int = 0) -> int:
    """Seed of sampled image ``index`` in ``stream``: weights of another training seed draw other noise, so
    the spread over training seeds holds sampling variance too."""
    return derive_seed(seed, index, stream) + training_seed * TRAINING


def derive_seed(seed: int, index: int, stream: int = 0) -> int:
    """Seed of draw ``index`` in ``stream`` for base ``seed``."""
    return seed * BASE + stream + index


def seed_path(root: str | Path, model: str, seed: int, suffix: str = "") -> Path:
    """Where one training seed's output of a model lives under a stage's folder (dvc.yaml's matrix):
    ``models/casdm/seed0``, ``metrics/evaluate/casdm/seed0.json``."""
    return Path(root) / model / f"seed{seed}{suffix}"
