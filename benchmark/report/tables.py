"""How leaderboard cells and comparisons read as text: the leaderboard's markdown (``reports/leaderboard.md``),
the HTML report's cells, and the terminal table of ``casdm leaderboard show``. Everything here reads the
typed rows (``benchmark.results``); nothing parses column names."""
from __future__ import annotations

from benchmark.metrics.stats import higher_is_better
from benchmark.results import Column, Comparison, Estimate, LeaderboardRow

HIDDEN = ("downstream_segmenter",)  # carried in the file, said once below the table rather than per cell


def digits(column: str) -> int:
    return 2 if column.startswith("fid:") else 4 if column.startswith("kid:") else 3


def fmt(cell: Estimate | None, column: str) -> str:
    """``mean ± std`` for a cell with a spread, ``value [low, high] verdict`` for one with an interval,
    ``-`` for a missing value."""
    v = None if cell is None else cell.value
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    d = digits(column)
    text = f"{v:.{d}f}"
    if cell.std is not None:
        text += f" ± {cell.std:.{d}f}"
    if cell.low is not None:
        text += f" [{cell.low:.{d}f}, {cell.high:.{d}f}]"
    if cell.verdict:
        text += f" {cell.verdict}"
    return text


NAMES = {"fid": "FID", "kid": "KID", "colour_shift": "colour shift", "semantic_miou": "semantic mIoU",
         "semantic_rare_miou": "semantic rare mIoU", "downstream_miou": "downstream mIoU",
         "downstream_rare_miou": "downstream rare mIoU", "delta_miou": "Δ mIoU vs real only",
         "delta_rare_miou": "Δ rare mIoU vs real only", "vs_control_miou": "mIoU vs control",
         "vs_control_rare_miou": "rare mIoU vs control"}
FID_CAVEAT = ("FID here is computed on the features of a small packaged ImageNet encoder (named in the column and "
              "the protocol), not Inception-v3: it ranks rows of this run and is not comparable with the Inception "
              "FIDs papers report.")


def label(column: str) -> str:
    """A column's name for a reader: plain words and an arrow for the better direction (``fid:<extractor>``
    keeps the extractor, the reason its values are not Inception FIDs)."""
    head, _, extractor = column.partition(":")
    name = NAMES.get(head, head.replace("_", " "))
    arrow = "↑" if higher_is_better(column) else "↓"
    return f"{name} {arrow}" + (f" ({extractor.split(':')[0]})" if extractor else "")


def shown_columns(columns: list[Column]) -> list[str]:
    return [c.name for c in columns if c.name not in HIDDEN]


def p_text(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}" if p >= 0.001 else "< 0.001"


VERDICT_RULE = ("Verdicts are read from p-values Holm-adjusted within each family (the `comparison` column); "
                "intervals are unadjusted. `weights`: one training seed, a difference between these trained "
                "weights, not a method's win; `method`: >= 3 training seeds pooled. MDE: the smallest |A - B| "
                "the test would detect with 80 % power at the observed spread: an `indistinguishable` smaller "
                "than it says nothing either way. Seed sd: the spread over training seeds of the per-seed "
                "difference (this run's when it has >= 2 seeds, else the multi-seed run named beside it): a "
                "one-seed difference smaller than it could be another seed's.")


def comparison_lines(found: list[Comparison]) -> list[str]:
    lines = ["| comparison | A | B | metric | A - B | 95 % interval | p | p (Holm) | MDE | seed sd | verdict | scope | "
             "interval from | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in found:
        d = digits(c.metric + ":")
        interval = "-" if c.low is None else f"[{c.low:.{d}f}, {c.high:.{d}f}]"
        mde = "-" if c.mde is None else f"{c.mde:.{d}f}"
        spread = "-" if c.seed_sd is None else f"{c.seed_sd:.{d}f} ({c.seed_sd_from})"
        lines.append(f"| {c.kind} | {c.a} | {c.b} | {c.metric} | {c.delta:+.{d}f} | {interval} | {p_text(c.p)} | "
                     f"{p_text(c.p_adjusted)} | {mde} | {spread} | {c.verdict} | {c.scope} | {c.method} (n = {c.n}) | "
                     f"{c.note or ''} |")
    return lines


def markdown(columns: list[Column], table: list[LeaderboardRow], title: str, found: list[Comparison] = (),
             prdc_withheld: str | None = None) -> str:
    cols = shown_columns(columns)
    lines = [f"# {title}", "", "| " + " | ".join(["model", "role", *cols]) + " |", "|" + "---|" * (len(cols) + 2)]
    lines += ["| " + " | ".join([r.model, r.role, *(fmt(r.cells.get(c), c) for c in cols)]) + " |"
              for r in table]
    segmenters = {r.value("downstream_segmenter") for r in table if r.value("downstream_segmenter")}
    lines += ["", "Downstream columns: mean ± sample std over segmenter seeds; `delta_*` (against real only) and "
              "`vs_control_*` (against the size-matched control) are paired by seed: mean [95 % t interval] and the "
              "verdict (Holm-adjusted, see below). FID, KID and semantic mIoU: the value on all test maps [95 % "
              "bias-corrected bootstrap interval over the test set by `evaluate.bootstrap.unit`, the same resamples for every row]. precision / recall / density / coverage: PRDC on "
              "the FID features. `real`: FID/KID/PRDC of real training images against the test images (the floor "
              "for this extractor and image count), semantic mIoU of the judge on real test images (the ceiling). "
              "`real+control`: real + the real images of the training maps every model's synthetic set is drawn "
              "from. `-`: not applicable or absent (a class with no test pixel never enters a mean).",
              "", "Downstream segmenter: " + " | ".join(sorted(segmenters))]
    if prdc_withheld:
        lines += ["", f"precision / recall / density / coverage withheld (`-`): {prdc_withheld}."]
    if any(c.startswith("maps_") for c in cols):
        lines += ["", "`maps_*`: the text-prompted map generator's maps (row `<image model>+maps`), "
                  "`maps_baseline_*`: a random real training map with the prompt's class set. adherence: mean of "
                  "presence / absence / size / location / quantity shares; cooccurrence_l1, area_w1: distance "
                  "to the real training maps (lower = more realistic); diversity: pixel disagreement between "
                  "maps of one prompt."]
    if found:
        lines += ["", "## Comparisons", "", VERDICT_RULE, "", *comparison_lines(found)]
    return "\n".join(lines) + "\n"


SHORT = {"semantic_miou": "semantic mIoU", "semantic_rare_miou": "semantic rare mIoU", "downstream_miou": "mIoU",
         "downstream_mdice": "mDice", "downstream_rare_miou": "rare mIoU", "downstream_rare_mdice": "rare mDice",
         "delta_miou": "Δ mIoU", "delta_rare_miou": "Δ rare mIoU", "delta_mdice": "Δ mDice",
         "delta_rare_mdice": "Δ rare mDice", "vs_control_miou": "Δ mIoU vs control",
         "vs_control_rare_miou": "Δ rare mIoU vs control", "maps_adherence": "maps adherence"}


def rich_table(primary: str, run_id: str, columns: list[Column], table: list[LeaderboardRow], full: bool = False):
    """The leaderboard as a rich Table: the headline columns (every column with ``full``)."""
    from rich.table import Table

    shown = [c for c in shown_columns(columns) if full or c.startswith(("fid:", "kid:"))
             or c in SHORT and "mdice" not in c.removeprefix("downstream_") or c == "downstream_mdice"]
    extractors = sorted({c.split(":", 1)[1] for c in shown if c.startswith("fid:")})
    t = Table(title=f"leaderboard (MLflow run {run_id[:8]}, sorted by {primary}); "
                    f"FID/KID features: {', '.join(extractors) or '-'}; downstream: mean ± std over seeds")
    for label, names in (("model", [r.model for r in table]), ("role", [r.role for r in table])):
        t.add_column(label, justify="left", no_wrap=True, min_width=max(map(len, names), default=None))
    for c in shown:
        label = c.split(":")[0].upper() + (f" [{extractors.index(c.split(':', 1)[1]) + 1}]" if len(extractors) > 1
                                            else "") if c.startswith(("fid:", "kid:")) else SHORT.get(c, c)
        t.add_column(label, justify="right", no_wrap=True)  # names are never cut short
    for r in table:
        t.add_row(r.model, r.role, *[fmt(r.cells.get(c), c) for c in shown])
    return t
