"""The sample stage: images for every test map (FID, semantic fidelity) and for a chosen set of
training maps (the "real + synthetic" downstream variant), PNGs named after their maps, one manifest.

Why two sets: images made from test maps must never train a downstream segmenter (that would show
it the test labels), and images made from training maps are not what FID compares with the real
test images.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.config import Params, SampleConfig
from benchmark.engine.data import PreparedDataset
from benchmark.engine.registry import make_kind
from benchmark.io import atomic_dir, write_json
from benchmark.manifest import ImageRecord, Manifest
from benchmark.seeds import TEST_IMAGES, TRAIN_IMAGES, derive_seed
from casdm.pipeline import to_uint8


def pick_train_maps(data: PreparedDataset, cfg: SampleConfig) -> list[int]:
    """Indices of the training maps to turn into images: ``rare_first`` takes maps holding a rare
    class first (each group in a seeded random order), ``random`` a seeded random draw."""
    n = len(data) if cfg.train_maps is None else min(cfg.train_maps, len(data))
    order = np.random.default_rng(cfg.seed).permutation(len(data)).tolist()
    if cfg.train_selection == "rare_first":
        rare, masks = set(data.table.rare_ids), data.masks()
        has_rare = {i for i in order if rare & set(np.unique(masks[i]))}
        order = [i for i in order if i in has_rare] + [i for i in order if i not in has_rare]
    return sorted(order[:n])


def sample(params: Params, name: str, model_dir: Path, data_dir: Path, out: Path, metrics: Path) -> dict:
    """Images of ``name`` (a key of params.models) for the test maps and the chosen training maps."""
    sc, recipe = params.sample, params.models[name].sampling
    test, train = PreparedDataset(data_dir, "test"), PreparedDataset(data_dir, "train")
    pipe = make_kind(params, name, test.table).load_pipeline(model_dir, sc.use_ema)
    jobs = {"test": (test, list(range(len(test) if sc.max_images is None else min(sc.max_images, len(test)))), TEST_IMAGES),
            "train": (train, pick_train_maps(train, sc), TRAIN_IMAGES)}
    records, t0 = [], time.perf_counter()
    with atomic_dir(out) as tmp:
        for split, (data, indices, stream) in jobs.items():
            (tmp / split).mkdir()
            for s in range(0, len(indices), sc.batch_size):
                items = [data[i] for i in indices[s: s + sc.batch_size]]
                labels = torch.stack([it["labels"] for it in items]).to(pipe.device)
                # seeds differ between splits and images, and do not depend on the batch size
                seeds = [derive_seed(sc.seed, s + k, stream) for k in range(len(items))]
                gens = [torch.Generator(device=pipe.device).manual_seed(seed) for seed in seeds]
                images = pipe(labels, recipe.num_inference_steps, recipe.guidance_scale, generator=gens,
                              output_type="pt").images
                for it, img, seed in zip(items, to_uint8(images), seeds):
                    Image.fromarray(img).save(tmp / split / f"{it['id']}.png")
                    records.append(ImageRecord(id=it["id"], split=split, image=f"{split}/{it['id']}.png",
                                               map=str(Path(data_dir) / "masks" / f"{it['id']}.png"), seed=seed))
        seconds = time.perf_counter() - t0
        Manifest(model=name, images=records, made_with={
            "scheduler": recipe.scheduler, "num_inference_steps": recipe.num_inference_steps,
            "guidance_scale": recipe.guidance_scale, "use_ema": sc.use_ema}).write(tmp)
    counts = {split: sum(r.split == split for r in records) for split in jobs}
    result = {"images": len(records), "test_images": counts["test"], "train_images": counts["train"],
              "s_per_image": seconds / max(len(records), 1), "scheduler": recipe.scheduler,
              "num_inference_steps": recipe.num_inference_steps}
    write_json(Path(metrics), result)
    return result
