"""The map-generator stages: ``train-maps`` (the generator on the shared trainer), ``maps`` (maps for a
prompt set, images for them with a chosen image model, the generator's metrics next to the
retrieval baseline's). ``evaluate-maps`` (``benchmark/stages/evaluate.py``) scores the pairs downstream.

The generator is an ordinary model entry, ``maps.generator``, trained as model ``mapgen`` of a
derived parameter set (it becomes the one ``models`` entry and ``maps.train`` overrides ``train:``),
so trainer, resuming, checkpoints and MLflow tracking are the ones every image model uses.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.config import Params
from benchmark.engine.data import PreparedDataset
from benchmark.engine.trainer import RunPaths, train
from benchmark.io import atomic_dir, read_utf8, write_json
from benchmark.kinds.mapgen import MapGenOptions
from benchmark.kinds.registry import get_kind, make_kind
from benchmark.manifest import ImageRecord, Manifest
from benchmark.metrics.maps import RetrievalBaseline, summary
from benchmark.seeds import DIVERSITY_MAPS, MAP_IMAGES, derive_seed
from casdm.pipeline import to_uint8
from casdm.prompts import (
    Prompt,
    PromptError,
    Vocabulary,
    describe_map,
    format_prompt,
    parse_prompt,
)

MAPGEN = "mapgen"
TIMES = ("s_per_map", "s_per_image")  # wall-clock seconds: in metrics/maps.json, never in the cached folder


def generator_params(params: Params) -> Params:
    """params with ``models = {mapgen: maps.generator}`` and ``train`` overridden by ``maps.train``: the
    shared trainer, resuming and tracking then train the generator as they train any model."""
    m = params.maps
    return params.model_copy(update={"models": {MAPGEN: m.generator}, "train": params.train.model_copy(update=m.train)})


def generator_options(params: Params) -> MapGenOptions:
    """``maps.generator.training``, validated by the mapgen kind (errors name the key)."""
    return get_kind(MAPGEN).parse_options(params.maps.generator.training, "params.yaml: maps.generator.training")


def train_generator(params: Params, paths: RunPaths, console=None) -> dict:
    generator_options(params)  # a bad option fails naming maps.generator.training, before anything starts
    return train(generator_params(params), MAPGEN, paths, console=console)


def load_generator(params: Params, folder: Path, table):
    generator_options(params)
    gp = generator_params(params)
    return make_kind(gp, MAPGEN, table).load_pipeline(Path(folder), params.sample.use_ema)


def read_prompt_file(path: Path, vocab: Vocabulary) -> list[Prompt]:
    """One prompt per line; blank lines and ``#`` comments skipped; an error names file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: prompt file not found (params.yaml maps.generate.prompt_file)")
    text = read_utf8(path, "a prompt file in UTF-8")  # a BOM is not read as part of the first class name
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            prompts.append(parse_prompt(line, vocab))
        except PromptError as exc:
            raise PromptError(f"{path}:{n}: {exc}") from None
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line expected)")
    return prompts


def prompt_set(params: Params, vocab: Vocabulary, real_maps: list[np.ndarray]) -> list[Prompt]:
    g = params.maps.generate
    if g.prompts == "file":
        base = read_prompt_file(Path(g.prompt_file), vocab)
        return [base[i % len(base)] for i in range(g.num)]
    rng = np.random.default_rng(g.seed)
    idx = rng.choice(len(real_maps), size=g.num, replace=g.num > len(real_maps))
    return [describe_map(real_maps[i], vocab) for i in idx]


def generate(pipe, prompts: list[Prompt], seeds: list[int], batch_size: int, steps: int, guidance: float) -> list[np.ndarray]:
    out = []
    for s in range(0, len(prompts), batch_size):
        gens = [torch.Generator(device=pipe.device).manual_seed(x) for x in seeds[s: s + batch_size]]
        out += list(pipe(prompts[s: s + batch_size], steps, guidance, generator=gens, output_type="np").maps)
    return out


def draw_images(pipe, maps: list[np.ndarray], seeds: list[int], batch_size: int, recipe,
                precision: str) -> list[np.ndarray]:
    """Images of ``maps`` by an image pipeline, under ``precision`` as the sample stage runs it."""
    from benchmark.engine.sample import autocast

    out = []
    for s in range(0, len(maps), batch_size):
        labels = torch.from_numpy(np.stack(maps[s: s + batch_size]).astype(np.int64)).to(pipe.device)
        gens = [torch.Generator(device=pipe.device).manual_seed(x) for x in seeds[s: s + batch_size]]
        with autocast(precision, pipe.device):
            images = pipe(labels, recipe.num_inference_steps, recipe.guidance_scale, generator=gens,
                          output_type="pt").images
        out += list(to_uint8(images))
    return out


def prompt_seeds(params: Params, n: int) -> list[int]:
    """One generation seed per prompt (its image is drawn in the ``MAP_IMAGES`` stream)."""
    return [derive_seed(params.maps.generate.seed, i) for i in range(n)]


def score_generator(params: Params, pipe, prompts: list[Prompt], real_maps: list[np.ndarray], rare: list[str],
                    log=print) -> tuple[dict, list[np.ndarray]]:
    """Maps for ``prompts`` (plus repeats of the first few, for diversity) and the metrics of the
    generator and of the retrieval baseline on the same prompts; returns (metrics, maps)."""
    m, g = params.maps, params.maps.generate
    vocab = pipe.mapgen.vocab
    seeds = prompt_seeds(params, len(prompts))
    t0 = time.perf_counter()
    s = m.generator.sampling
    maps = generate(pipe, prompts, seeds, g.batch_size, s.num_inference_steps, s.guidance_scale)
    n_div = min(m.metrics.diversity_prompts, len(prompts))
    extra = [(i, derive_seed(g.seed, i * 100 + k, DIVERSITY_MAPS)) for i in range(n_div)
             for k in range(1, m.metrics.diversity_samples)]
    extra_maps = generate(pipe, [prompts[i] for i, _ in extra], [s for _, s in extra], g.batch_size,
                          s.num_inference_steps, s.guidance_scale)
    map_seconds = time.perf_counter() - t0
    groups = [[maps[i]] + [e for (j, _), e in zip(extra, extra_maps) if j == i] for i in range(n_div)]
    log(f"maps: {len(maps) + len(extra_maps)} generated in {map_seconds:.1f} s")
    rng = np.random.default_rng(g.seed)
    baseline = RetrievalBaseline(real_maps, vocab)
    base_maps = [baseline.sample(p, rng) for p in prompts]
    base_groups = [[base_maps[i]] + [baseline.sample(prompts[i], rng) for _ in range(m.metrics.diversity_samples - 1)]
                   for i in range(n_div)]
    result = {"text_encoder": generator_options(params).text_encoder, "prompts": g.prompts, "num": len(prompts), "image_model": g.image_model,
              "generator": summary(prompts, maps, groups, real_maps, vocab, rare),
              "baseline": summary(prompts, base_maps, base_groups, real_maps, vocab, rare),
              "s_per_map": map_seconds / (len(maps) + len(extra_maps))}
    return result, maps


def build_maps(params: Params, data_dir: Path, generator_dir: Path, image_model_dir: Path, out: Path, metrics: Path,
               log=print) -> dict:
    """Maps for the prompt set, images for them by ``maps.generate.image_model`` (its pipeline in
    ``image_model_dir``), and the generator's and the baseline's metrics."""
    g = params.maps.generate
    train = PreparedDataset(data_dir, "train")
    table = train.table
    pipe = load_generator(params, generator_dir, table)
    real_maps = train.masks()
    prompts = prompt_set(params, pipe.mapgen.vocab, real_maps)
    seeds = prompt_seeds(params, len(prompts))
    result, maps = score_generator(params, pipe, prompts, real_maps, table.rare_names, log)

    image_pipe = make_kind(params, g.image_model, table).load_pipeline(image_model_dir, params.sample.use_ema)
    t0 = time.perf_counter()
    images = draw_images(image_pipe, maps, [s + MAP_IMAGES for s in seeds], g.batch_size,
                         params.models[g.image_model].sampling, params.sample.mixed_precision)
    result["s_per_image"] = (time.perf_counter() - t0) / len(images)
    log(f"maps: {len(images)} images by {g.image_model} ({result['s_per_image']:.2f} s/image)")
    records = []
    with atomic_dir(out) as tmp:
        (tmp / "maps").mkdir()
        (tmp / "train").mkdir()
        for i, (prompt, mp, img, seed) in enumerate(zip(prompts, maps, images, seeds)):
            rid = f"gen-{i:05d}"
            Image.fromarray(mp.astype(np.uint8)).save(tmp / "maps" / f"{rid}.png")
            Image.fromarray(img).save(tmp / "train" / f"{rid}.png")
            records.append(ImageRecord(id=rid, split="train", image=f"train/{rid}.png", map=f"maps/{rid}.png",
                                       map_in_folder=True, prompt=format_prompt(prompt), seed=seed))
        Manifest(model=f"{g.image_model}+maps", images=records,
                 made_with={"image_model": g.image_model, "generator": str(generator_dir),
                            "training_seed": params.train.seed}).write(tmp)
        # the cached folder's copy carries no wall-clock times: the folder's hash is then the same for the same
        # maps and images (a re-run after an upstream stage re-ran changes nothing); metrics/maps.json has them
        write_json(tmp / "metrics.json", {k: v for k, v in result.items() if k not in TIMES})
    write_json(metrics, _flat_metrics(result))
    _log_mlflow(params, result, maps[:8], images[:8], prompts[:8], table)
    return result


def _flat_metrics(result: dict) -> dict:
    """The DVC metrics file: scalars only, ``generator`` and ``baseline`` side by side."""
    out = {k: result[k] for k in ("text_encoder", "prompts", "num", "image_model", "s_per_map", "s_per_image")}
    for who in ("generator", "baseline"):
        r = result[who]
        out[who] = {**{k: v for k, v in r["adherence"].items() if not isinstance(v, dict)},
                    **{k: v for k, v in r["realism"].items() if k in ("cooccurrence_l1", "area_w1")},
                    "diversity": r["diversity"]}
    return out


def _log_mlflow(params: Params, result: dict, maps, images, prompts, table) -> None:
    """A ``maps`` run: the metrics of generator and baseline, and a grid (map row over image row)."""
    import mlflow

    from benchmark.provenance import git_commit, hash_json
    from benchmark.tracking import connect, flatten, owner_tags

    connect(params.tracking)
    with mlflow.start_run(run_name="maps"):
        mlflow.set_tags({**owner_tags(), "kind": "maps", "model": MAPGEN, "image_model": result["image_model"],
                         "text_encoder": result["text_encoder"], "git_commit": git_commit(),
                         "params_hash": hash_json(params.maps.model_dump(mode="json"))})
        mlflow.log_params({f"maps.{k}": str(v)[:500] for k, v in flatten(params.maps.model_dump(mode="json")).items()
                           if not k.startswith("presets.")})
        flat = _flat_metrics(result)
        mlflow.log_metrics({f"{who}/{k}": float(v) for who in ("generator", "baseline")
                            for k, v in flat[who].items() if isinstance(v, (int, float)) and v is not None})
        mlflow.log_dict(result, "maps_metrics.json")
        if maps:
            grid = np.concatenate([np.concatenate(list(table.colourise(np.stack(maps))), axis=1),
                                   np.concatenate(list(images), axis=1)], axis=0)
            mlflow.log_image(grid, artifact_file="maps_and_images.png")
            mlflow.log_text("\n".join(format_prompt(p) for p in prompts), "prompts.txt")
