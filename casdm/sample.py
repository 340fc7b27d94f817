"""The sample stage: one generated image per test map, PNG named after the map, plus a manifest."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image

from benchmark.config import Params
from benchmark.io import atomic_dir, write_json
from casdm.data import PreparedDataset
from casdm.pipeline import to_uint8
from casdm.registry import make_kind


def sample(params: Params, name: str, model_dir: Path, data_dir: Path, out: Path, metrics: Path | None = None) -> dict:
    sc, recipe = params.sample, params.models[name].sampling
    test = PreparedDataset(data_dir, "test")
    pipe = make_kind(params, name, test.table).load_pipeline(model_dir, sc.use_ema)
    n = len(test) if sc.max_images is None else min(sc.max_images, len(test))
    records, t0 = [], time.perf_counter()
    with atomic_dir(out) as tmp:
        for s in range(0, n, sc.batch_size):
            items = [test[i] for i in range(s, min(n, s + sc.batch_size))]
            labels = torch.stack([it["labels"] for it in items]).to(pipe.device)
            seeds = [sc.seed * 1_000_003 + s + k for k in range(len(items))]
            gens = [torch.Generator(device=pipe.device).manual_seed(seed) for seed in seeds]
            images = pipe(labels, recipe.num_inference_steps, recipe.guidance_scale, generator=gens,
                          output_type="pt").images
            for it, img, seed in zip(items, to_uint8(images), seeds):
                Image.fromarray(img).save(tmp / f"{it['id']}.png")
                records.append({"id": it["id"], "image": f"{it['id']}.png",
                                "map": str(Path(data_dir) / "masks" / f"{it['id']}.png"), "seed": seed})
        seconds = time.perf_counter() - t0
        manifest = {"model": name, "scheduler": recipe.scheduler, "num_inference_steps": recipe.num_inference_steps,
                    "guidance_scale": recipe.guidance_scale, "use_ema": sc.use_ema, "images": records}
        write_json(tmp / "manifest.json", manifest)
    result = {"images": n, "s_per_image": seconds / max(n, 1), "scheduler": recipe.scheduler,
              "num_inference_steps": recipe.num_inference_steps}
    if metrics is not None:
        write_json(Path(metrics), result)
    return result
