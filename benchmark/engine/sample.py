"""The sample stage: images for every test map (FID, semantic fidelity) and for a chosen set of
training maps (the "real + synthetic" downstream variant), PNGs named after their maps, one manifest.

Why two sets: images made from test maps must never train a downstream segmenter (that would show
it the test labels), and images made from training maps are not what FID compares with the real
test images.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.config import Params
from benchmark.devices import mixed_precision
from benchmark.engine.data import PreparedDataset, pick_train_maps
from benchmark.io import atomic_dir, time_left, write_json
from benchmark.kinds.registry import make_kind
from benchmark.manifest import ImageRecord, Manifest
from benchmark.seeds import TEST_IMAGES, TRAIN_IMAGES, image_seed
from casdm.pipeline import to_uint8


def autocast(setting: str, device: torch.device):
    """The sampling precision (``sample.mixed_precision``): the networks run under autocast, the
    scheduler's arithmetic stays in float32 (bf16 outputs meet float32 samples and promote)."""
    setting = mixed_precision(setting)
    if setting == "no":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if setting == "bf16" else torch.float16)


PROGRESS_EVERY_S = 30.0  # a long sampling stage says how far it is at most this often (DVC logs are not a tty)


def _draw(pipe, recipe, sc, jobs: dict, data_dir: Path, folder: Path, rank: int, world: int,
          training_seed: int, log=None) -> list:
    """This process's images: batch k of each split when k % world == rank. Batches are cut exactly
    as one process cuts them and every image's seed is its index's, so the images do not depend on
    the number of processes. Returns (position, record) pairs for the manifest's order. With ``log``,
    a line of progress at most every ``PROGRESS_EVERY_S`` seconds and at the end of each split."""
    out, t0 = [], time.perf_counter()
    last = t0
    for split, (data, indices, stream) in jobs.items():
        (folder / split).mkdir(exist_ok=True)
        split_t0 = time.perf_counter()
        for k, s in enumerate(range(0, len(indices), sc.batch_size)):
            if k % world != rank:
                continue
            items = [data[i] for i in indices[s: s + sc.batch_size]]
            labels = torch.stack([it["labels"] for it in items]).to(pipe.device)
            # seeds differ between splits, images and training seeds, and do not depend on the batch size
            seeds = [image_seed(sc.seed, s + j, stream, training_seed) for j in range(len(items))]
            gens = [torch.Generator(device=pipe.device).manual_seed(seed) for seed in seeds]
            with autocast(sc.mixed_precision, pipe.device):
                images = pipe(labels, recipe.num_inference_steps, recipe.guidance_scale, generator=gens,
                              output_type="pt").images
            for j, (it, img, seed) in enumerate(zip(items, to_uint8(images), seeds)):
                Image.fromarray(img).save(folder / split / f"{it['id']}.png")
                out.append(((split != "test", s + j), ImageRecord(
                    id=it["id"], split=split, image=f"{split}/{it['id']}.png",
                    map=str(Path(data_dir) / "masks" / f"{it['id']}.png"), seed=seed)))
            now = time.perf_counter()
            end = s + sc.batch_size >= len(indices)
            if log is not None and (end or now - last >= PROGRESS_EVERY_S):
                last = now
                done = min(s + sc.batch_size, len(indices))
                log(f"{split} maps: {done}/{len(indices)} images"
                    f"{f' (process {rank} of {world})' if world > 1 else ''}, {now - t0:.0f} s"
                    f"{time_left(done, len(indices), now - split_t0)}")
    return out


def sample(params: Params, name: str, model_dir: Path, data_dir: Path, out: Path, metrics: Path, log=None) -> dict:
    """Images of ``name`` (a key of params.models) for the test maps and the chosen training maps.

    Under ``accelerate launch`` every process draws its share of the batches into the one temp folder
    rank 0 made; rank 0 writes the manifest and renames the folder into place when all are done, and
    returns the metrics (the other processes return ``{}``)."""
    from contextlib import nullcontext

    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    from benchmark.launch import inside_launch

    # on a multi-GPU launch this also selects this process's GPU; without one, gloo on the CPU
    state = PartialState(cpu=not torch.cuda.is_available())
    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    if inside_launch() and world == 1:  # every process would draw every image and race on the folder
        raise RuntimeError(f"launched as one of {os.environ.get('WORLD_SIZE')} processes, but torch.distributed "
                           "did not start (accelerate sees one): check the launcher's environment")
    sc, recipe = params.sample, params.models[name].sampling
    test, train = PreparedDataset(data_dir, "test").check_resolution(params.data.resolution), PreparedDataset(data_dir, "train")
    pipe = make_kind(params, name, test.table).load_pipeline(model_dir, sc.use_ema)
    jobs = {"test": (test, list(range(len(test) if sc.max_images is None else min(sc.max_images, len(test)))), TEST_IMAGES),
            "train": (train, pick_train_maps(train, sc), TRAIN_IMAGES)}
    t0 = time.perf_counter()
    with (atomic_dir(out) if main else nullcontext()) as tmp:
        folder = Path(broadcast_object_list([str(tmp) if main else None])[0]) if world > 1 else tmp
        mine = _draw(pipe, recipe, sc, jobs, data_dir, folder, rank, world, params.train.seed,
                     (lambda line: log(f"{name}: {line}")) if log is not None else None)
        pairs = gather_object(mine) if world > 1 else mine  # every process's, in one list
        if not main:
            return {}
        records = [r for _, r in sorted(pairs, key=lambda p: p[0])]
        seconds = time.perf_counter() - t0
        Manifest(model=name, images=records, made_with={
            "scheduler": recipe.scheduler, "num_inference_steps": recipe.num_inference_steps,
            "guidance_scale": recipe.guidance_scale, "use_ema": sc.use_ema,
            "mixed_precision": sc.mixed_precision, "training_seed": params.train.seed}).write(tmp)
    counts = {split: sum(r.split == split for r in records) for split in jobs}
    result = {"images": len(records), "test_images": counts["test"], "train_images": counts["train"],
              "s_per_image": seconds / max(len(records), 1), "scheduler": recipe.scheduler,
              "num_inference_steps": recipe.num_inference_steps, "processes": world,
              "mixed_precision": sc.mixed_precision, "training_seed": params.train.seed}
    write_json(Path(metrics), result)
    return result
