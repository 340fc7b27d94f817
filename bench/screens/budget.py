"""Quality per CPU-minute: one model trained at several step budgets, each scored by the leaderboard's
own stages (``dvc repro evaluate@MODEL-SEED``: FID/KID/PRDC, the judge's semantic mIoU, downstream
real + synthetic, colour shift), in a scratch copy of the project that scores on the validation videos
(``bench/screens/__init__.py``; the test split only with ``--split test --allow-test-split``).

    python -m bench.screens.budget --model casdm-mse --steps 400 800 1600 3200 --tag mse
    python -m bench.screens.budget --model casdm-mse --steps 800 --set diffusion.snr_gamma=5 --tag snr5

``--set KEY=VALUE`` (dotted key, YAML value; repeatable) and ``--profile NAME`` change params.yaml in
the copy only, so the levers of issue 14 are measured with the same commands users run. The data,
the real-image features and the judge are made once (the first budget); each budget then re-runs
train@, sample@ and evaluate@ of the model. Writes ``bench/results/budget_<tag>.json`` (per budget:
steps, CPU seconds per stage, the scores next to their references) and ``budget_<tag>.png`` (each score
against the CPU-minutes the model cost: training + sampling).

The copy's stages run the copy's own code (``bench.pipeline.env_for`` puts it first on the import path),
copied from the working tree when each invocation starts. Minutes are only comparable between runs that
had the cores to themselves.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from bench.pipeline import env_for, timed_repro
from bench.screens import add_split_args, check_split, validation_override
from benchmark.io import write_json
from benchmark.seeds import seed_path
from benchmark.provenance import copy_project, git_commit

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"


def parse_set(items: list[str], flag: str = "--set") -> dict:
    """``a.b=1`` pairs (given with ``flag``) -> a nested override; the value is read as YAML (numbers, null, lists)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected KEY=VALUE with a dotted KEY, e.g. diffusion.snr_gamma=5")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def point(dst: Path, model: str, steps: int, stages: dict, seed: int = 0) -> dict:
    """One budget's scores (training seed ``seed``), with the references they are read against."""
    ev = json.loads(seed_path(dst / "metrics" / "evaluate", model, seed, ".json").read_text())
    real = json.loads((dst / "metrics" / "evaluate" / "real.json").read_text())
    tr = json.loads(seed_path(dst / "metrics" / "train", model, seed, ".json").read_text())
    q, rq, sem, ds = ev["quality"], real["quality"], ev["semantic"], ev["downstream"]
    cpu_s = stages.get(f"train@{model}-{seed}", 0) + stages.get(f"sample@{model}-{seed}", 0)
    return {
        "steps": steps, "stage_s": stages, "model_cpu_min": round(cpu_s / 60, 2), "s_per_step": tr["s_per_step"],
        "fid": q["fid"], "fid_low": q.get("fid_low"), "fid_high": q.get("fid_high"), "reference_fid": rq["fid"],
        "fid_x_reference": q["fid"] / rq["fid"], "precision": q["prdc"]["precision"], "recall": q["prdc"]["recall"],
        "colour_shift": q["colour"]["colour_shift"], "mean_rgb": q["colour"]["mean_rgb"],
        "real_mean_rgb": q["colour"]["real_mean_rgb"],
        "semantic_miou": sem["miou"], "semantic_rare_miou": sem["rare_miou"], "judge_on_real": real["semantic"]["miou"],
        "semantic_x_judge": sem["miou"] / real["semantic"]["miou"],
        "downstream_miou": ds["miou"], "downstream_miou_std": ds["miou_std"], "downstream_rare_miou": ds["rare_miou"],
        "downstream_rare_miou_std": ds["rare_miou_std"], "real_only_miou": real["downstream"]["miou"],
        "real_only_rare_miou": real["downstream"]["rare_miou"], "final_loss": tr["final_loss"]}


def plot(result: dict, out: Path) -> None:
    """Each score against the model's CPU-minutes, its reference as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    x = [p["model_cpu_min"] for p in pts]
    panels = [("fid_x_reference", "FID / reference FID (target <= 4)", 4.0, True),
              ("semantic_x_judge", "semantic mIoU / judge on real (target >= 0.5)", 0.5, False),
              ("downstream_rare_miou", "downstream rare mIoU (real only dashed)", pts[0]["real_only_rare_miou"], False),
              ("colour_shift", "colour shift, share of 0-255 (target <= 0.10)", 0.10, False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title, ref, log) in zip(axes, panels):
        ax.plot(x, [p[key] for p in pts], "o-")
        for p in pts:
            ax.annotate(str(p["steps"]), (p["model_cpu_min"], p[key]), fontsize=7, textcoords="offset points",
                        xytext=(3, 3))
        ax.axhline(ref, ls="--", c="grey")
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("CPU minutes (train + sample)")
    fig.suptitle(f"{result['model']} ({result['tag']}): quality per CPU-minute", fontsize=9)
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="casdm-mse")
    ap.add_argument("--steps", type=int, nargs="+", default=[400, 800, 1600, 3200])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--profile", help="a benchmark/config/profiles/ name applied first")
    ap.add_argument("--tag", default=None, help="results name (default: the model)")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (samples, logs); a folder kept "
                    "from an earlier run is reused: its data, features and judge are not made again")
    add_split_args(ap)
    a = ap.parse_args(argv)
    check_split(a.split, a.allow_test_split)
    from benchmark.config import load_params, update_params

    tag = a.tag or a.model
    override = parse_set(a.sets)
    result = {"model": a.model, "tag": tag, "commit": git_commit(REPO), "profile": a.profile, "set": override,
              "split": a.split,
              "cpu_count": os.cpu_count(), "points": []}
    tmp = None
    if a.keep:
        dst = copy_project(REPO, a.keep)
    else:
        tmp = tempfile.TemporaryDirectory()
        dst = copy_project(REPO, Path(tmp.name))
    try:
        if a.profile:
            subprocess.run(["casdm", "params", "profile", a.profile], cwd=dst, env=env_for(dst), check=True)
        if override:
            update_params(override, dst / "params.yaml")
        if a.split == "val":  # the copy scores on the validation videos; the test videos are in no split
            update_params(validation_override(load_params(dst / "params.yaml")), dst / "params.yaml")
        with (dst / f"budget_{tag}.log").open("w") as log:
            for steps in a.steps:
                update_params({"train": {"steps": steps}}, dst / "params.yaml")
                seed = load_params(dst / "params.yaml").train.seeds[0]
                stages = timed_repro(dst, log, f"evaluate@{a.model}-{seed}")
                p = point(dst, a.model, steps, stages, seed)
                result["points"].append(p)
                print(f"{a.model} {steps} steps: {p['model_cpu_min']:.1f} CPU-min, FID {p['fid']:.1f} "
                      f"({p['fid_x_reference']:.1f}x ref), semantic {p['semantic_miou']:.3f} "
                      f"({p['semantic_x_judge']:.2f}x judge), downstream rare {p['downstream_rare_miou']:.3f}, "
                      f"colour shift {p['colour_shift']:.3f}", flush=True)
                write_json(RESULTS / f"budget_{tag}.json", result)  # each budget kept as it lands
        plot(result, RESULTS / f"budget_{tag}.png")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
