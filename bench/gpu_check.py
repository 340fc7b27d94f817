"""The check a lent GPU runs once, in under 5 minutes (issue 29): is the paper-scale route ready?

1. ``bench.speed --preset paper --device cuda --dtype bfloat16 --batch 10 --resolution 256``: the training
   step of each loss (MSE, CA-MSE, CA-MSE + CA-SP, so CA-SP's overhead), peak GPU memory, sampling
   s/image, and the step's fraction of the card's measured peak FLOP/s.
2. The paper profile's ``dvc repro``, cut to a few steps, at 256 px on a CholecSeg8K-layout fixture
   (the suite's synthetic videos read through the ``cholecseg8k`` source, as Kaggle's folders are):
   every stage the targets need, on the paper preset, with the release's optimiser and sampler.
   Only the step counts, the image counts, the FID features (EfficientNet-Lite0 stage 1, 24-d: the
   cut's 40 test images cannot fill Inception's 2,048) and the ImageNet encoders (nothing can be
   downloaded on a lent card) differ from ``casdm params profile paper``.

Usage (repo root, venv active): ``python -m bench.gpu_check [--out bench/results/gpu_check.json]``.
``--device cpu --preset cpu --resolution 32`` runs the same two parts at a size a CPU can (how CI keeps
the script working); ``--dry-run`` writes the scratch project and checks its params without training.
Works in a scratch copy (``--keep DIR`` keeps it); the working tree is left alone.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.pipeline import env_for, timed_repro
from benchmark.io import write_json
from benchmark.provenance import copy_project, git_commit

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("evaluate@casdm-0",)  # synth, prepare, train, sample, features, the judge and the method's evaluation

# the paper profile, cut: what makes it fit in minutes and run offline; everything else is the profile's
CUT = {
    "data": {"synthetic": {"videos": 8, "clips_per_video": 1, "frames_per_clip": 10},
             "split": {"test_fraction": 0.5, "val_fraction": 0.0}},
    "train": {"steps": 4, "warmup_steps": 1},
    "runtime": {"checkpoint_every": 2, "log_every": 1, "sample_every": 4, "num_workers": 2},
    "sample": {"max_images": None, "train_maps": 4, "batch_size": 8},
    # FID needs more test images than feature dimensions: 40 test frames against blocks.1's 24
    "evaluate": {"fid": {"extractor": "efficientnet_lite0:blocks.1"}, "prdc_k": 5,
                 "semantic": {"encoder_weights": "none", "steps": 2},
                 "downstream": {"encoder_weights": "none", "steps": 2, "seeds": [0]},
                 "bootstrap": {"resamples": 20}},
}


def scratch_params(dst: Path, preset: str, resolution: int, steps: int) -> dict:
    """Apply the paper profile in the copy, then the cut (and, off the GPU, a smaller preset/resolution)."""
    from ruamel.yaml import YAML

    from benchmark.config import deep_merge, merge_into

    run = subprocess.run(["casdm", "params", "profile", "paper"], cwd=dst, env=env_for(dst), capture_output=True,
                         text=True)
    if run.returncode:
        raise SystemExit(f"casdm params profile paper failed in {dst}: {run.stderr.strip()[-500:]}")
    yaml = YAML()
    params = yaml.load((dst / "params.yaml").read_text())
    sp_start = max(1, steps // 2)  # CA-SP runs in the cut too: half the steps without it, half with
    cut = deep_merge(CUT, {"data": {"source": "cholecseg8k", "root": "data/raw/synthetic", "resolution": resolution},
                           "train": {"preset": preset, "steps": steps},
                           "models": {m: {"training": {"sp_start_step": sp_start}}
                                      for m, v in params["models"].items() if v.get("kind", "casdm") == "casdm"}})
    merge_into(params, cut)  # the profile's comments stay
    with (dst / "params.yaml").open("w") as f:
        yaml.dump(params, f)
    check = subprocess.run(["casdm", "params", "check"], cwd=dst, env=env_for(dst), capture_output=True, text=True)
    if check.returncode:
        raise SystemExit(f"the cut paper profile does not validate: {check.stderr.strip()[-500:]}")
    return cut


def speed(device: str, dtype: str, preset: str, resolution: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "bench.speed", "--preset", preset, "--device", device, "--dtype", dtype,
           "--batch", "10", "--resolution", str(resolution), "--steps", "3", "--sample-steps", "10", "--out", str(out)]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"bench.speed failed: {run.stderr.strip()[-1000:]}")
    return {"command": " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - t0, 1), **json.loads(out.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda on the lent card; cpu to run the check at a CPU's size")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--preset", default="paper", help="network preset of both parts (params.yaml presets:)")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="training steps of each model in the cut repro")
    ap.add_argument("--targets", nargs="*", default=list(TARGETS), help="dvc repro targets of the cut run")
    ap.add_argument("--dry-run", action="store_true", help="write and check the scratch project; train nothing")
    ap.add_argument("--keep", type=Path, help="keep the scratch project here")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    a = ap.parse_args()
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here (this check is for a lent GPU; --device cpu runs "
                             "it at a CPU's size)")
    with tempfile.TemporaryDirectory(prefix="casdm-gpu-check-") as tmp:
        dst = a.keep or Path(tmp) / "project"
        dst.mkdir(parents=True, exist_ok=True)
        copy_project(REPO, dst)
        result = {"commit": git_commit(REPO), "device": a.device, "dtype": a.dtype, "preset": a.preset,
                  "resolution": a.resolution, "cut": scratch_params(dst, a.preset, a.resolution, a.steps)}
        if not a.dry_run:
            result["speed"] = speed(a.device, a.dtype, a.preset, a.resolution, Path(tmp) / "speed.json")
            t0 = time.perf_counter()
            with (dst / "repro.log").open("w") as log:
                result["repro_stages_s"] = timed_repro(dst, log, *a.targets)
            result["repro_s"] = round(time.perf_counter() - t0, 1)
            rows = sorted((dst / "metrics" / "evaluate").rglob("*.json"))
            result["evaluated"] = [str(p.relative_to(dst)) for p in rows]
        write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "cut"}, indent=1)[:4000])


if __name__ == "__main__":
    main()
