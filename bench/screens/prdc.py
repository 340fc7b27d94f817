"""Can PRDC tell anything at this scale? Real against real, on the training split alone (its clips in
two halves, every frame of a clip on one side, as many frames as the test split has): a faithful
"generator" should score precision and recall near 1. For each feature layer and k, precision /
recall / density / coverage; the leaderboard shows PRDC only where real against real reaches 0.5
(``benchmark/stages/leaderboard.py``). The test split is never read.

    python -m bench.screens.prdc --root . --layers blocks.2 blocks.3 blocks.4 --k 5 10 20 40
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.io import write_json

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--layers", nargs="+", default=["blocks.2", "blocks.3", "blocks.4"])
    ap.add_argument("--k", nargs="+", type=int, default=[5, 10, 20, 40])
    ap.add_argument("--images", type=int, default=160, help="frames per side (the default test split has 160)")
    ap.add_argument("--tag", default="default")
    a = ap.parse_args(argv)
    import numpy as np

    from benchmark.devices import device
    from benchmark.engine.data import PreparedDataset
    from benchmark.metrics.quality import files_features, make_extractor, prdc

    data = a.root / "data" / "prepared"
    train = PreparedDataset(data, "train")
    units = train.units("clip")
    clips = sorted(set(units))
    order = [clips[i] for i in np.random.default_rng(0).permutation(len(clips))]
    halves = [set(order[0::2]), set(order[1::2])]
    sides = [[i for i, u in enumerate(units) if u in h][:a.images] for h in halves]
    files = [[data / "images" / f"{train.rows[i]['id']}.png" for i in side] for side in sides]
    out = {"images": [len(s) for s in sides], "clips": [len(h) for h in halves], "rows": []}
    for layer in a.layers:
        ex = make_extractor(f"efficientnet_lite0:{layer}", device())
        fa, fb = (files_features(f, ex, device()) for f in files)
        for k in a.k:
            scores = prdc(fb, fa, k)
            out["rows"].append({"extractor": ex.name, "dims": ex.dims, "k": k, **scores})
            print(f"{ex.name} ({ex.dims}-d), k {k}: " + ", ".join(f"{m} {v:.3f}" for m, v in scores.items()),
                  flush=True)
    write_json(REPO / "bench" / "results" / f"prdc_{a.tag}.json", out)
    return out


if __name__ == "__main__":
    main()
