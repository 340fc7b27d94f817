"""Our SPADE U-Net against the authors' released network, same configuration, same machine, one run.

The authors' ``unet_2d.py`` (the guided-diffusion / SDM U-Net they copy over diffusers' own file) is never
vendored here: fetch their repository and pass the file, e.g.

    git clone https://github.com/YihangZHO/Image-Synthesis-with-Class-Aware-Semantic-Diffusion-Models-for-Surgical-Scene-Segmentation authors
    python -m bench.authors --authors authors/unet_2d.py

Its three package-relative imports (``from ...configuration_utils`` and the like: the file expects to sit
inside diffusers) are pointed at the installed diffusers in memory; nothing else in it is touched. Both
networks are built at the authors' architecture scaled by ``--channels`` (their 256 at the paper scale;
6 levels, 2 residual blocks, attention at 1/8, 1/16 and 1/32 of the image, 64 channels per head, SPADE
hidden 128, scale-shift norm, up/down-sampling inside residual blocks), with gradient checkpointing off
in both (theirs defaults to on, which trades time for memory), in float32. Reported: parameters of
each (they must match), the median training step (forward, MSE, backward, AdamW) and the median
sampling step (no grad; ours with the map's SPADE modulation computed once per image, as our pipeline
samples). Writes ``bench/results/authors_<resolution>px.json``.
"""
from __future__ import annotations

import argparse
import re
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.speed import median_time
from benchmark.devices import cpu_model
from benchmark.io import write_json
from casdm.unet import SPADEUNet, SpadeCache

REPO = Path(__file__).resolve().parents[1]
RELATIVE = {r"from \.\.\.configuration_utils import": "from diffusers.configuration_utils import",
            r"from \.\.\.utils import": "from diffusers.utils import",
            r"from \.\.modeling_utils import": "from diffusers.models.modeling_utils import"}


def load_authors(path: Path) -> types.ModuleType:
    """Their file as a module, its package-relative imports pointed at the installed diffusers."""
    source = path.read_text(encoding="utf-8")
    for pattern, absolute in RELATIVE.items():
        source, n = re.subn(pattern, absolute, source)
        if n == 0:
            raise SystemExit(f"{path}: no line '{pattern.replace(chr(92), '')}'; expected the authors' unet_2d.py")
    module = types.ModuleType("authors_unet_2d")
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def networks(authors: types.ModuleType, channels: int, resolution: int, classes: int):
    theirs = authors.UNet2DModel(
        image_size=resolution, in_channels=3, out_channels=3, model_channels=channels, num_res_blocks=2,
        attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), dropout=0, num_classes=classes,
        use_checkpoint=False, use_fp16=False, num_heads=1, num_head_channels=64, num_heads_upsample=-1,
        use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False)
    ours = SPADEUNet(sample_size=resolution, num_classes=classes, base_channels=channels,
                     channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                     attention_resolutions=tuple(resolution // d for d in (8, 16, 32)), head_channels=64,
                     spade_hidden=128)
    return theirs, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--authors", type=Path, required=True, help="their unet_2d.py (a fetched copy; never vendored)")
    ap.add_argument("--channels", type=int, default=64, help="model_channels of both (paper: 256)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="timed steps of each (after 2 warm-up steps)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if not a.authors.is_file():
        raise SystemExit(f"--authors {a.authors}: not a file; expected the authors' unet_2d.py (see --help)")
    classes = 13
    theirs, ours = networks(load_authors(a.authors), a.channels, a.resolution, classes)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.resolution, a.resolution, generator=g)
    labels = torch.randint(0, classes, (a.batch, a.resolution, a.resolution), generator=g)
    onehot = F.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    t = torch.randint(0, 1000, (a.batch,), generator=g)
    calls = {"authors": lambda m, s: m(x, t, s).sample, "ours": lambda m, s: m(x, t, s).sample}
    result = {"authors_file": str(a.authors), "channels": a.channels, "resolution": a.resolution, "batch": a.batch,
              "dtype": "float32", "threads": torch.get_num_threads(), "cpu": cpu_model(),
              "torch": torch.__version__, "networks": {}}
    for name, model in (("authors", theirs), ("ours", ours)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step():
            loss = F.mse_loss(calls[name](model, onehot), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def sample_step():
            with torch.no_grad():
                calls[name](model, cache if name == "ours" else onehot)

        cache = SpadeCache(onehot)  # ours: the SPADE modulation of this map, made at the first step and reused
        model.train()
        train = median_time(train_step, 2, a.steps)
        model.eval()
        sample = median_time(sample_step, 2, a.steps)
        result["networks"][name] = {"parameters": sum(p.numel() for p in model.parameters()),
                                    "train_s_per_step": train, "sample_s_per_step": sample}
        print(f"{name}: {result['networks'][name]['parameters']:,} parameters, train {train:.3f} s/step, "
              f"sample {sample:.3f} s/step")
    n = result["networks"]
    result["ours_speedup"] = {k: n["authors"][f"{k}_s_per_step"] / n["ours"][f"{k}_s_per_step"] for k in ("train", "sample")}
    print(f"ours vs authors: train x{result['ours_speedup']['train']:.2f}, sample x{result['ours_speedup']['sample']:.2f}")
    write_json(a.out or REPO / "bench" / "results" / f"authors_{a.resolution}px.json", result)


if __name__ == "__main__":
    main()
