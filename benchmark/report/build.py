"""Render a report: the sections (``sections.py``) through Jinja2 templates into ``index.html`` (one
file, every picture inlined as a data URI) and ``report.md`` + ``assets/*.png``, written into a temp
folder and swapped in whole, the pages rendered before anything is written (a failed build leaves
the previous report as it was)."""
from __future__ import annotations

import base64
import time
from pathlib import Path

from benchmark.config import Params
from benchmark.io import atomic_dir, write_text
from benchmark.report import sections
from benchmark.report.inputs import ReportPaths, load

TEMPLATES = Path(__file__).parent / "templates"


def escapes(name: str | None) -> bool:
    """Whether a template's output is HTML, so every value put into it is escaped: ``*.html.j2`` (and the
    stylesheet included into it). ``select_autoescape(["html"])`` matched only names *ending* in .html,
    none of ours, and a branch or class name holding ``<svg/onload=...>`` reached the page raw."""
    return name is not None and (name.endswith((".html.j2", ".html", ".css.j2")))


def environment():
    """Autoescaping for HTML; Markdown templates get plain text."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=escapes,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=3: "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.{d}f}")
    env.filters["secs"] = lambda v: "-" if v is None else (f"{v / 60:.1f} min" if v >= 90 else f"{v:.0f} s")
    return env


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def context(params: Params, paths: ReportPaths) -> tuple[dict, dict[str, bytes]]:
    """Every section's content, in reading order, and the pictures they refer to."""
    inp = load(params, paths)
    assets: dict[str, bytes] = {}
    ctx = {"title": params.report.title, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "protocol": sections.protocol(inp), "headline": sections.headline(inp),
           "leaderboard": sections.leaderboard(inp), "ladder": sections.ladder(inp, assets),
           "per_class": sections.per_class(inp, assets), "samples": sections.samples(inp, assets),
           "training": sections.training(inp, assets), "study": sections.study(inp, assets),
           "reproduce": sections.reproduce(inp), "missing": inp.missing}
    return ctx, assets


def write(out: Path, ctx: dict, assets: dict[str, bytes], html: str = "report.html.j2",
          md: str = "report.md.j2") -> dict:
    """``out/assets/*.png`` (a folder swapped in whole), then ``out/report.md`` and ``out/index.html``
    (each temp-then-rename), leaving the folder's other files (``leaderboard.md``) alone; returns sizes."""
    env = environment()
    out = Path(out)
    pages = {"index.html": env.get_template(html).render(**ctx, img={k: data_uri(v) for k, v in assets.items()}),
             "report.md": env.get_template(md).render(**ctx, img={k: f"assets/{k}.png" for k in assets})}
    with atomic_dir(out / "assets") as tmp:  # rendered first: a template error leaves the old report whole
        for name, png in assets.items():
            (tmp / f"{name}.png").write_bytes(png)
    for name in ("report.md", "index.html"):
        write_text(out / name, pages[name])
    return {"index.html": (out / "index.html").stat().st_size, "report.md": (out / "report.md").stat().st_size,
            "assets": sum(p.stat().st_size for p in (out / "assets").iterdir())}


def build(params: Params, paths: ReportPaths, out: Path) -> dict:
    t0 = time.perf_counter()
    ctx, assets = context(params, paths)
    sizes = write(out, ctx, assets)
    return {"sizes": sizes, "seconds": time.perf_counter() - t0, "headline": ctx["headline"].get("sentence"),
            "skipped": {k: v["skipped"] for k, v in ctx.items() if isinstance(v, dict) and "skipped" in v}}
