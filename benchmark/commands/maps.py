"""``casdm maps ...``: the text-prompted map generator (train, build = the DVC stages; generate and
prompts for people)."""
from __future__ import annotations

from pathlib import Path

import typer

from benchmark.commands.common import (
    ERRORS,
    PARAMS,
    SEED,
    console,
    err,
    fail,
    need_tracking,
    or_fail,
    path_option,
    read_params,
    with_seed,
)

maps_app = typer.Typer(help="Text-prompted segmentation-map generator: train, build (stages), generate, prompts.",
                       no_args_is_help=True)
DATA = typer.Option(Path("data/prepared"), "--data", help="prepared dataset")


@maps_app.command("train")
def maps_train(params: Path = PARAMS, data: Path = path_option("the prepared dataset"),
               checkpoints: Path = path_option("checkpoint folder (kept between runs: re-running resumes)"),
               out: Path = path_option("folder of the trained generator"),
               metrics: Path = path_option("training metrics JSON"), plot: Path = path_option("loss-curve CSV"),
               seed: int | None = SEED) -> None:
    """The DVC stage train-maps: the generator on the shared trainer (re-running resumes)."""
    from benchmark.engine.trainer import RunPaths
    from benchmark.stages.mapgen import train_generator

    paths = RunPaths(data=data, checkpoints=checkpoints, model=out, metrics=metrics, plot=plot)
    m = or_fail(train_generator, with_seed(read_params(params), seed), paths, console=err)
    console.print(f"mapgen: {m['steps']} steps, loss {m['first_loss']:.4g} -> {m['final_loss']:.4g}, "
                  f"{m['s_per_step']:.3f} s/step, {m['num_parameters'] / 1e6:.2f} M parameters")


@maps_app.command("build")
def maps_build(params: Path = PARAMS, data: Path = path_option("the prepared dataset"),
               generator: Path = path_option("the trained map generator"),
               image_model: Path = path_option("the trained pipeline of maps.generate.image_model"),
               out: Path = path_option("folder of the generated maps and images"),
               metrics: Path = path_option("the generator's metrics JSON"),
               seed: int | None = SEED) -> None:
    """The DVC stage maps: maps for the prompt set, images by maps.generate.image_model, metrics."""
    from benchmark.stages.mapgen import build_maps

    p = with_seed(read_params(params), seed)
    need_tracking(p)
    r = or_fail(build_maps, p, data, generator, image_model, out, metrics, log=err.print)
    for who in ("generator", "baseline"):
        a, q = r[who]["adherence"], r[who]["realism"]
        console.print(f"{who:9s}: adherence {a['adherence']:.3f} (presence {a['presence']:.3f}, size {a['size']:.3f}, "
                      f"location {a['location']:.3f}, quantity {a['quantity']:.3f}), co-occurrence L1 "
                      f"{q['cooccurrence_l1']:.3f}, area W1 {q['area_w1']:.4f}, diversity {r[who]['diversity']:.3f}")


@maps_app.command("generate")
def maps_generate(prompt: str = typer.Option(..., "--prompt", help='e.g. "Liver, large, upper left; Grasper, '
                                             'small, centre, two regions"'),
                  num: int = typer.Option(4, "--num", min=1, help="maps to generate"),
                  out: Path = typer.Option(Path("generated"), "--out", help="output folder (new, or one an earlier "
                                          "maps generate wrote: it is replaced whole)"),
                  images: bool = typer.Option(True, "--images/--no-images", help="also draw images for the maps "
                                              "with maps.generate.image_model"),
                  seed: int = typer.Option(0, "--seed"), params: Path = PARAMS, data: Path = DATA,
                  generator: Path = typer.Option(Path("models/mapgen"), help="the trained map generator"),
                  models: Path = typer.Option(Path("models"), help="folder of the trained image models (<model>/seed<N>, the first of train.seeds)")) -> None:
    """Maps for one prompt (class-id PNGs, coloured previews, optionally images) and how well they follow it."""
    from PIL import Image

    from benchmark.engine.data import PreparedDataset
    from benchmark.io import atomic_dir, foreign_files, write_json
    from benchmark.kinds.registry import make_kind
    from benchmark.stages.mapgen import draw_images, generate, load_generator
    from benchmark.metrics.maps import adherence
    from benchmark.seeds import derive_seed, seed_path
    from casdm.prompts import PromptError, describe_map, format_prompt, parse_prompt

    theirs = foreign_files(out, ("map-*.png", "image-*.png", "prompt.json"))
    here = out.resolve() == Path.cwd().resolve()
    if theirs or here:
        fail(f"--out {out}: {'is the working directory' if here else 'holds ' + ', '.join(theirs[:3])}, which maps "
             "generate did not write; it replaces its folder whole, so give a new folder or one it wrote before")
    p = read_params(params)
    try:
        table = PreparedDataset(data, "train").table
        pipe = load_generator(p, generator, table)
        parsed = parse_prompt(prompt, pipe.mapgen.vocab)
    except (PromptError, *ERRORS) as exc:
        fail(str(exc))
    seeds = [derive_seed(seed, i) for i in range(num)]
    s = p.maps.generator.sampling
    maps = generate(pipe, [parsed] * num, seeds, p.maps.generate.batch_size, s.num_inference_steps, s.guidance_scale)
    pictures = None
    if images:
        name = p.maps.generate.image_model
        image_pipe = make_kind(p, name, table).load_pipeline(seed_path(models, name, p.train.seed), p.sample.use_ema)
        pictures = draw_images(image_pipe, maps, seeds, p.sample.batch_size, p.models[name].sampling,
                               p.sample.mixed_precision)
    with atomic_dir(out) as tmp:
        for i, m in enumerate(maps):
            Image.fromarray(m).save(tmp / f"map-{i:03d}.png")
            Image.fromarray(table.colourise(m)).save(tmp / f"map-{i:03d}-colour.png")
            if pictures is not None:
                Image.fromarray(pictures[i]).save(tmp / f"image-{i:03d}.png")
        a = adherence([parsed] * num, maps, pipe.mapgen.vocab)
        write_json(tmp / "prompt.json", {"prompt": format_prompt(parsed), "seeds": seeds, "adherence": a,
                                         "described": [format_prompt(describe_map(m, pipe.mapgen.vocab)) for m in maps]})
    console.print(f"prompt: {format_prompt(parsed)}", soft_wrap=True)
    for i, m in enumerate(maps):
        console.print(f"  map {i}: {format_prompt(describe_map(m, pipe.mapgen.vocab))}", soft_wrap=True, highlight=False)
    console.print(f"adherence {a['adherence']:.3f} (presence {a['presence']:.3f}); {num} maps -> {out}")


@maps_app.command("prompts")
def maps_prompts(num: int = typer.Option(5, "--num", min=1), split: str = typer.Option("train", "--split"),
                 params: Path = PARAMS, data: Path = DATA) -> None:
    """Prompts built from the first maps of a split (size thresholds fitted on the training maps)."""
    from benchmark.engine.data import PreparedDataset
    from benchmark.stages.mapgen import generator_options
    from casdm.prompts import describe_map, fit_vocabulary, format_prompt

    p = read_params(params)
    try:
        train = PreparedDataset(data, "train")
        shown = train if split == "train" else PreparedDataset(data, split)
    except ERRORS as exc:
        fail(str(exc))
    vocab = fit_vocabulary(train.masks(), train.table.names, generator_options(p).min_region)
    for name, (lo, hi) in zip(vocab.names, vocab.thresholds):
        err.print(f"  {name}: small < {lo:.4f} <= medium < {hi:.4f} <= large (share of the map)", highlight=False)
    for m, r in zip(shown.masks()[:num], shown.rows):
        console.print(f"{r['id']}: {format_prompt(describe_map(m, vocab))}", soft_wrap=True, highlight=False)
