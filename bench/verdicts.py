"""How many verdicts change between two runs' ``comparisons.json``: the re-run test of a conclusion.

Usage (repo root): ``python -m bench.verdicts OLD NEW [--also MORE ...] [--out bench/results/verdicts_<name>.json]``, where
OLD and NEW are comparisons files (``git show REV:metrics/comparisons.json > old.json`` for a committed
run). A comparison is matched by (a, b, metric); one present in only one file is listed, not counted.
A verdict the suite prints should survive a re-run of the same protocol on another machine: the
changed ones are the comparisons whose conclusion is floating-point order, not the data.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmark.io import write_json


def key(row: dict) -> tuple[str, str, str]:
    return row["a"], row["b"], row["metric"]


def changes(old: list[dict], new: list[dict]) -> dict:
    """Matched comparisons, the ones whose verdict differs, and those in one file only."""
    before, after = {key(r): r for r in old}, {key(r): r for r in new}
    shared = [k for k in before if k in after]
    changed = [{"a": k[0], "b": k[1], "metric": k[2], "family": after[k].get("family"),
                "old": {f: before[k].get(f) for f in ("delta", "p_adjusted", "verdict")},
                "new": {f: after[k].get(f) for f in ("delta", "p_adjusted", "verdict")}}
               for k in shared if before[k]["verdict"] != after[k]["verdict"]]
    return {"matched": len(shared), "changed": len(changed), "rows": changed,
            "only_old": [list(k) for k in before if k not in after],
            "only_new": [list(k) for k in after if k not in before]}


def held(runs: list[list[dict]]) -> list[dict]:
    """The comparisons present in every run whose verdict is the same in all of them, with each run's
    difference: the conclusions that survive the re-runs (machines, precisions) given."""
    by_run = [{key(r): r for r in run} for run in runs]
    shared = [k for k in by_run[0] if all(k in b for b in by_run[1:])]
    return [{"a": k[0], "b": k[1], "metric": k[2], "verdict": by_run[0][k]["verdict"],
             "deltas": [b[k]["delta"] for b in by_run]}
            for k in shared if len({b[k]["verdict"] for b in by_run}) == 1]


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--also", type=Path, nargs="*", default=[],
                    help="more runs' comparisons.json: list the verdicts that held in every run given")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    result = changes(json.loads(a.old.read_text()), json.loads(a.new.read_text()))
    if a.also:
        runs = [json.loads(p.read_text()) for p in (a.old, a.new, *a.also)]
        result["held_in_all"] = held(runs)
        result["runs"] = [str(p) for p in (a.old, a.new, *a.also)]
        kept = [r for r in result["held_in_all"] if r["verdict"] != "indistinguishable"]
        print(f"{len(result['held_in_all'])} verdicts held in all {len(runs)} runs, {len(kept)} of them a difference:")
        for r in kept:
            print(f"  {r['a']} vs {r['b']} {r['metric']}: {r['verdict']} ({', '.join(f'{d:+.3g}' for d in r['deltas'])})")
    t = Table(title=f"{result['changed']} of {result['matched']} verdicts changed")
    for col in ("a", "b", "metric", "old", "new"):
        t.add_column(col)
    for r in result["rows"]:
        t.add_row(r["a"], r["b"], r["metric"], f"{r['old']['verdict']} ({r['old']['delta']:+.3g})",
                  f"{r['new']['verdict']} ({r['new']['delta']:+.3g})")
    Console(width=140).print(t)
    if a.out:
        write_json(a.out, {"old": str(a.old), "new": str(a.new), **result})
    return result


if __name__ == "__main__":
    main()
