"""The report's pictures as PNG bytes: a forest plot of the ablation ladder, per-class bars, loss
curves (matplotlib, Agg), and image grids (PIL): map | real | each model, at a readable size."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

VERDICT_COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "indistinguishable": "#6e7781"}
TILE = 128  # px per image in the grids: 64 px samples upscaled 2x (nearest: no invented detail)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def forest(steps: list, metrics: list[str]) -> bytes:
    """One panel per metric; one row per ladder step: the paired delta and its interval, coloured by
    verdict, against a zero line (each metric on its own scale: FID and mIoU do not share an axis)."""
    plt = _plt()
    labels = list(dict.fromkeys(c.step for c in steps))  # ladder order
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 0.5 + 0.45 * len(labels)), sharey=True,
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for y, label in enumerate(labels):
            c = next((c for c in steps if c.step == label and c.metric == m), None)
            if c is None:
                ax.text(0, y, "n/a", ha="center", va="center", fontsize=7, color="#6e7781")
                continue
            colour = VERDICT_COLOURS.get(c.verdict, "black")
            if c.low is not None:
                ax.plot([c.low, c.high], [y, y], color=colour, lw=2)
            ax.plot([c.delta], [y], "o", color=colour)
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_title(m + (" (lower better)" if m in ("fid", "kid") else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.invert_yaxis()
    return _png(fig)


def per_class_bars(series: dict[str, dict[str, float | None]], classes: list[str], rare: set[str], metric: str,
                   spread: dict[str, dict[str, float | None]] | None = None, seeds: int | None = None) -> bytes:
    """Grouped horizontal bars, one group per class, one bar per row (real only first); rare classes
    starred; a class a row has no score for (absent from its test maps) is written "absent". With
    ``spread``, each bar carries its +-1 sd over the ``seeds`` downstream segmenter seeds: two bars whose
    whiskers overlap are not told apart by this figure (the leaderboard's tests are what decide)."""
    plt = _plt()
    names = list(series)
    h = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(6, 0.09 * len(classes) * max(len(names), 3) + 0.9))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        for k, c in enumerate(classes):
            v = series[name].get(c)
            y = k + (i - (len(names) - 1) / 2) * h
            if v is None:
                ax.text(0.005, y, "absent", fontsize=6, va="center", color="#6e7781")
            else:
                sd = (spread or {}).get(name, {}).get(c)
                ax.barh(y, v, height=h, color=cmap(i % 10), label=name if k == 0 else None,
                        xerr=sd, error_kw={"elinewidth": 0.6, "capsize": 1.2, "ecolor": "#24292f"})
    ax.set_yticks(range(len(classes)), [f"{c} *" if c in rare else c for c in classes], fontsize=7)
    for k, c in enumerate(classes):
        if c in rare:
            ax.axhspan(k - 0.45, k + 0.45, color="#fff8c5", zorder=0)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    whiskers = f"; whiskers: +-1 sd over {seeds} segmenter seeds" if spread and seeds else ""
    ax.set_xlabel(f"downstream {metric} (* rare class{whiskers})", fontsize=8)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)  # above: never over a bar
    return _png(fig)


def loss_curves(curves: dict[str, tuple[list[float], list[float]]]) -> bytes:
    """Every model's training loss on one log-scale plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, (steps, loss) in curves.items():
        ax.plot(steps, loss, label=name, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("training loss", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    return _png(fig)


def _tile(img: np.ndarray) -> Image.Image:
    im = Image.fromarray(img)
    scale = max(1, math.ceil(TILE / max(im.size)))
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def grid(rows: list[list[np.ndarray | None]], header: list[str], row_labels: list[str]) -> bytes:
    """An image grid with a header row and a label per row; ``None`` cells stay blank."""
    tiles = [[None if c is None else _tile(c) for c in r] for r in rows]
    w = max((t.width for r in tiles for t in r if t is not None), default=TILE)
    h = max((t.height for r in tiles for t in r if t is not None), default=TILE)
    left, top, pad = 150, 22, 4
    canvas = Image.new("RGB", (left + len(header) * (w + pad), top + len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(header):
        draw.text((left + j * (w + pad) + 2, 4), text[: w // 6], fill="black")
    for i, (r, label) in enumerate(zip(tiles, row_labels)):
        y = top + i * (h + pad)
        for k, line in enumerate(label.split("\n")[:6]):
            draw.text((4, y + 4 + 12 * k), line[:24], fill="black")
        for j, t in enumerate(r):
            if t is not None:
                canvas.paste(t, (left + j * (w + pad), y))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_file(path) -> bytes:
    """A PNG on disk, re-encoded (so any mode PIL reads becomes a plain RGB PNG)."""
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()
