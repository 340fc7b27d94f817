"""A real browser for the report tests: Debian's ``chromium`` (``.ci/run`` installs it when missing)
driven by Playwright through ``executable_path``; Playwright's own browser download is never used."""
from __future__ import annotations

import shutil
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # gitignored; CI keeps what lands here


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("no chromium on PATH: install Debian's package (`apt-get install chromium`; .ci/run does)")
    return path


def load_page(html: Path, screenshot: Path) -> dict:
    """Open ``html`` from disk; return console errors, failed requests, every image's natural width and
    the leaderboard's row names; save a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    errors, failed = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(html.resolve().as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.naturalWidth])")
            rows = page.eval_on_selector_all("#leaderboard-table tr[data-model]", "els => els.map(e => e.dataset.model)")
            requests = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "failed": failed, "images": widths, "rows": rows, "requests": requests}
