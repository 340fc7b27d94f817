"""Text encoders of the map generator side by side, at the CPU profile (params.yaml's ``maps:``):
for each encoder, train the generator (the shared trainer, in a scratch folder, no MLflow run) and
score its maps on the training-prompt set and on the rare-class prompt file, next to the retrieval
baseline (a random real training map with the prompt's class set).

    python -m bench.screens.maps --encoders minilm learned [--steps 400] [--out bench/results/maps_cpu.json]

``clip:<local folder>`` works the same where CLIP weights are on disk; offline it fails at once.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmark.config import load_params
from benchmark.io import write_json
from benchmark.engine.data import PreparedDataset
from benchmark.engine.trainer import RunPaths, train
from benchmark.stages.mapgen import MAPGEN, generator_options, generator_params, load_generator, prompt_set, score_generator

KEYS = ("adherence", "presence", "absence", "size", "location", "quantity", "clause_accuracy", "rare_presence")


def row(result: dict, who: str) -> dict:
    a, r = result[who]["adherence"], result[who]["realism"]
    return {**{k: a[k] for k in KEYS}, "cooccurrence_l1": r["cooccurrence_l1"], "area_w1": r["area_w1"],
            "diversity": result[who]["diversity"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=["minilm", "learned"])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: maps.train / train.steps)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--rare-prompts", type=Path, default=Path("prompts/rare.txt"))
    ap.add_argument("--guidance", type=float, nargs="+", default=None,
                    help="score the trained generator at each of these guidance scales (default: maps.generator.sampling's)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml override (dotted key, YAML value), e.g. maps.generator.training.drop_rate=0.2")
    ap.add_argument("--out", type=Path, default=Path("bench/results/maps_cpu.json"))
    args = ap.parse_args()
    base = load_params(args.params)
    if args.sets:
        from bench.screens.budget import parse_set
        from benchmark.config import deep_merge, parse_params, read_yaml

        base = parse_params(deep_merge(read_yaml(args.params), parse_set(args.sets)), f"{args.params} + --set")
    data = PreparedDataset(args.data, "train")
    real = data.masks()
    rare = data.table.rare_names
    report = {"steps": args.steps, "class_aware": generator_options(base).class_aware, "set": args.sets, "encoders": {}}
    scales = args.guidance or [base.maps.generator.sampling.guidance_scale]
    for enc in args.encoders:
        entry = base.maps.generator
        over = {"generator": entry.model_copy(update={"training": {**entry.training, "text_encoder": enc}}),
                "train": {**base.maps.train, **({"steps": args.steps} if args.steps else {})}}
        p = base.model_copy(update={"maps": base.maps.model_copy(update=over)})
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            m = train(generator_params(p), MAPGEN, RunPaths(args.data, tmp / "ckpt", tmp / "model", tmp / "m.json",
                                                          tmp / "p.csv"), track=False)
            seconds = time.perf_counter() - t0
            pipe = load_generator(p, tmp / "model", data.table)
            entry = {"train_s": seconds, "s_per_step": m["s_per_step"], "final_loss": m["final_loss"]}
            for scale in scales:
                at = entry if len(scales) == 1 else entry.setdefault("guidance", {}).setdefault(str(scale), {})
                g = p.maps.generator
                guided = g.model_copy(update={"sampling": g.sampling.model_copy(update={"guidance_scale": scale})})
                for source in ("train", "file"):
                    gen = p.maps.generate.model_copy(update={"prompts": source, "prompt_file": str(args.rare_prompts)})
                    q = p.model_copy(update={"maps": p.maps.model_copy(update={"generate": gen, "generator": guided})})
                    result, _ = score_generator(q, pipe, prompt_set(q, pipe.mapgen.vocab, real), real, rare)
                    at[source] = {"generator": row(result, "generator"), "baseline": row(result, "baseline"),
                                  "s_per_map": result["s_per_map"]}
            report["encoders"][enc] = entry
            print(json.dumps({enc: entry}, indent=1))
    write_json(args.out, report)


if __name__ == "__main__":
    main()
