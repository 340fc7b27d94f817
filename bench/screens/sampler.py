"""The sampler and its step count, on one trained model: for each (scheduler, steps) the images of the
root project's test maps (a screen's copy: the validation videos, ``bench/screens/__init__.py``) are drawn by
the sample stage's own code and scored by the leaderboard's image scores (FID against the
real test images, the judge's semantic mIoU, the colour shift), with seconds per image. No retraining:
a sampler is a ``models.<name>.sampling`` change.

    python -m bench.screens.sampler --model casdm-mse --root /tmp/screen --samplers ddpm:15 ddim:15 dpmsolver++:15
    python -m bench.screens.sampler --model controlnet --samplers ddpm:15 --training conditioning_scale=2 --tag cn_scale2

``--training KEY=VALUE`` changes an option of the model's ``training:`` block that only acts at sampling
(ControlNet's ``conditioning_scale``) for this screen; the trained weights are the same.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.screens import add_split_args, check_split, scores_on_validation
from benchmark.io import write_json
from benchmark.provenance import git_commit
from benchmark.seeds import seed_path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="casdm-mse")
    ap.add_argument("--root", type=Path, default=Path("."), help="a project folder whose pipeline ran (params.yaml, "
                    "data/prepared, models/, features/real, segmenters/judge)")
    ap.add_argument("--samplers", nargs="+", default=["ddpm:15", "ddim:15", "dpmsolver++:15"], metavar="NAME:STEPS")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--training", action="append", default=[], metavar="KEY=VALUE",
                    help="a sampling-time option of the model's training block, e.g. conditioning_scale=2")
    add_split_args(ap)
    a = ap.parse_args(argv)
    commit = git_commit(REPO)  # at the start: the code that ran, not the tree at the end
    check_split(a.split, a.allow_test_split)
    from bench.screens.budget import parse_set

    training = parse_set(a.training, "--training")  # a malformed KEY=VALUE fails before anything loads
    from benchmark.config import load_params
    from benchmark.devices import device
    from benchmark.metrics.downstream import GeneratedDataset, evaluate_segmenter
    from benchmark.engine.data import PreparedDataset
    from benchmark.engine.sample import sample
    from benchmark.stages.evaluate import aligned, extractor, load_judge, load_real_features
    from benchmark.metrics.quality import colour_cast, fid_kid, files_features

    root = a.root
    base = load_params(root / "params.yaml")
    if a.split == "val" and not scores_on_validation(base):
        raise SystemExit(f"{root / 'params.yaml'}: this project's test split is the leaderboard's (videos "
                         f"{base.data.split.test_videos}); point --root at a screen's copy that scores on validation "
                         "(python -m bench.screens.budget --keep DIR), or pass --split test --allow-test-split")
    data = root / "data" / "prepared"
    test = PreparedDataset(data, "test")
    ex = extractor(base)
    judge = load_judge(root / "segmenters" / "judge")
    result = {"model": a.model, "commit": commit, "root": str(root), "split": a.split, "training": training, "samplers": {}}
    for spec in a.samplers:
        name, _, steps = spec.partition(":")
        recipe = base.models[a.model].sampling.model_copy(update={"scheduler": name, "num_inference_steps": int(steps)})
        models = dict(base.models)
        models[a.model] = models[a.model].model_copy(update={"sampling": recipe, "training": {
            **models[a.model].training, **training}})
        p = base.model_copy(update={"models": models, "sample": base.sample.model_copy(update={"train_maps": 0})})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = sample(p, a.model, seed_path(root / "models", a.model, p.train.seed), data, Path(tmp) / "s",
                       Path(tmp) / "m.json")
            seconds = time.perf_counter() - t0
            gen = GeneratedDataset(Path(tmp) / "s", "test")
            real = aligned(load_real_features(root / "features" / "real", ex, data), [x.id for x in gen.records], gen.folder)
            q = fid_kid(files_features(gen.image_files, ex, device(), base.evaluate.fid.batch_size), real, ex)
            sem = evaluate_segmenter(judge, gen, test.table, device=device())
            colour = colour_cast(gen.image_files, [data / "images" / f"{x.id}.png" for x in gen.records])
        entry = {"fid": q["fid"], "kid": q["kid"], "semantic_miou": sem.miou, "semantic_rare_miou": sem.rare_miou,
                 "colour_shift": colour["colour_shift"], "s_per_image": seconds / r["images"]}
        result["samplers"][spec] = entry
        print(spec, {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}, flush=True)
    write_json(REPO / "bench" / "results" / f"sampler_{a.tag or a.model}.json", result)
    return result


if __name__ == "__main__":
    main()
