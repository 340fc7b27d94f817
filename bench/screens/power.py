"""The downstream protocol's power: can its positive control, real + the real images of the sampled
training maps (a perfect generator of those maps), be told from real only? For each real fraction
(``evaluate.downstream.real_fraction``: whole clips, nested) and step budget, segmenters are trained on
the real subset and on the subset + the control's frames with the same seeds, and scored on the
**validation** split (never the test split: the default is chosen here), paired by seed: the
difference, its p, the minimum detectable effect (80 % power) and the seconds it cost.

    python -m bench.screens.power --root . --fractions 0.1 0.25 1.0 --seeds 0 1 2 3 4 --steps 120

``--root`` is a project folder with ``params.yaml`` and ``data/prepared`` (``dvc repro prepare``) whose
split has validation frames (``data.split.val_videos``). Writes ``bench/results/power_<tag>.json``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmark.io import write_json
from benchmark.provenance import git_commit

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.25, 1.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", nargs="+", type=int, default=None, help="segmenter steps (default: params.yaml's)")
    ap.add_argument("--split", default="val", help="the split scored: val (test is the leaderboard's alone)")
    ap.add_argument("--tag", default="default")
    a = ap.parse_args(argv)
    commit = git_commit(REPO)  # at the start: the code that ran, not the tree at the end
    if a.split == "test":
        ap.error("--split test: the test split is for the leaderboard only; screen on val")
    from torch.utils.data import Subset

    from benchmark.config import load_params
    from benchmark.engine.data import PreparedDataset, pick_train_maps
    from benchmark.metrics.downstream import downstream, real_subset
    from benchmark.metrics.stats import paired_seeds

    params = load_params(a.root / "params.yaml")
    data = a.root / "data" / "prepared"
    train, scored = PreparedDataset(data, "train"), PreparedDataset(data, a.split)
    control = Subset(train, pick_train_maps(train, params.sample))
    base = params.evaluate.downstream
    rows = []
    for steps in a.steps or [base.steps]:
        for fraction in a.fractions:
            cfg = base.model_copy(update={"seeds": a.seeds, "steps": steps, "real_fraction": fraction})
            real = real_subset(train, fraction, cfg.subset_seed)
            t0 = time.perf_counter()
            alone = downstream(cfg, [real], scored, log=lambda *_: None)
            t1 = time.perf_counter()
            more = downstream(cfg, [real, control], scored, log=lambda *_: None)
            t2 = time.perf_counter()
            row = {"fraction": fraction, "steps": steps, "real_frames": len(real), "control_frames": len(control),
                   "epochs_real_only": steps * cfg.batch_size / len(real), "seeds": a.seeds,
                   "s_real_only": t1 - t0, "s_with_control": t2 - t1}
            for m in ("miou", "rare_miou"):
                d = paired_seeds({p["seed"]: p[m] for p in more["per_seed"]},
                                 {p["seed"]: p[m] for p in alone["per_seed"]}, m, params.evaluate.bootstrap.level)
                row[m] = {"real_only": alone[m], "with_control": more[m],
                          **({} if d is None else d.model_dump(include={"delta", "low", "high", "p", "mde", "verdict"}))}
            rows.append(row)
            print(f"steps {steps}, fraction {fraction}: {len(real)} real frames; control - real mIoU "
                  f"{row['miou'].get('delta', float('nan')):+.4f} (p {row['miou'].get('p')}, MDE "
                  f"{row['miou'].get('mde')}), rare {row['rare_miou'].get('delta')}; {t2 - t0:.0f} s", flush=True)
    result = {"commit": commit, "split": a.split, "frames_scored": len(scored), "rows": rows,
              "params": {"segmenters": base.segmenters, "encoder_weights": base.encoder_weights,
                         "batch_size": base.batch_size, "lr": base.lr, "train_maps": params.sample.train_maps}}
    write_json(REPO / "bench" / "results" / f"power_{a.tag}.json", result)
    return result


if __name__ == "__main__":
    main()
