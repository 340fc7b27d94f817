"""Screenshots of the views a user of the finished benchmark opens: MLflow's UI (landing, runs, one run's
charts and images, the leaderboard run, compare), ``dvc plots show``, optuna-dashboard and the report.

Usage (repo root, venv active): ``python -m bench.screenshots PROJECT [--out docs/screenshots]
[--dashboard PATH]``, where PROJECT is a folder after ``dvc repro`` (e.g. ``python -m bench.pipeline tiny
--keep PROJECT``) with its ``mlflow.db``, and ``--dashboard`` the ``optuna-dashboard`` script of an
environment that has it (it is not one of the suite's dependencies). Servers are started on loopback
ports and stopped; the browser is Debian's ``chromium`` driven by Playwright (nothing downloaded).
Writes one PNG per view and ``index.json`` (view -> address) into ``--out``.
"""
from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchmark.io import write_json


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], cwd: Path, url: str, timeout: float = 120.0):
    """A server process until the block ends; waits until ``url`` answers."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                if requests.get(url, timeout=2).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"{cmd[0]} did not answer at {url}")
            time.sleep(1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def shoot(browser, url: str, path: Path, settle: float = 6.0, full: bool = False, clicks: tuple[str, ...] = ()) -> None:
    """A fresh page per view (the UIs poll, so "network idle" never comes; a hash-only change of one page
    would not reload it), given ``settle`` seconds to draw after it loaded, then ``clicks`` (text selectors)
    in order, as a user would pick an artifact from a list."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    try:
        page.goto(url, wait_until="load")
        time.sleep(settle)
        close = page.get_by_role("button", name="Close", exact=True)  # MLflow's assistant panel: a third of the page
        if "127.0.0.1" in url and close.count():
            close.first.click()
            time.sleep(1)
        for text in clicks:  # "TEXT": the first element showing it; "option:TEXT": a list's option; "key:NAME": a key
            if text.startswith("key:"):
                page.keyboard.press(text[4:])
            elif text.startswith("option:"):
                page.get_by_role("option", name=text[7:]).first.click()
            else:
                page.get_by_text(text, exact=False).first.click()
            time.sleep(2)
        page.screenshot(path=str(path), full_page=full)
    finally:
        page.close()


def mlflow_views(project: Path) -> tuple[str, list[tuple[str, str]]]:
    """The experiment id and (view name, address path[, clicks]) tuples, from the project's own store."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("casdm-bench")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])  # newest first
    leader = next(r for r in runs if r.data.tags.get("kind") == "leaderboard")
    trained = next(r for r in runs if r.data.tags.get("model") == "casdm")
    q = "?workflowType=machine_learning"
    e = exp.experiment_id
    return e, [("mlflow_landing_default", f"#/experiments/{e}"),
               ("mlflow_runs", f"#/experiments/{e}{q}"),
               ("mlflow_run_charts", f"#/experiments/{e}/runs/{trained.info.run_id}/model-metrics{q}"),
               ("mlflow_run_images", f"#/experiments/{e}/runs/{trained.info.run_id}/artifacts/samples/last_grid.png{q}"),
               ("mlflow_leaderboard_run", f"#/experiments/{e}/runs/{leader.info.run_id}{q}"),
               ("mlflow_compare_charts", f"#/experiments/{e}/runs{q}&compareRunsMode=CHART"),
               ("mlflow_compare_grids", f"#/experiments/{e}/runs{q}&compareRunsMode=ARTIFACT",
                ("leaderboard.json", "option:samples/last_grid.json", "option:leaderboard.json", "key:Escape")),
               ("mlflow_models", f"#/experiments/{e}/models{q}")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path, help="a project folder after dvc repro (with mlflow.db)")
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--dashboard", help="the optuna-dashboard script to run (skipped when not given)")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from tests.browser import chromium

    project, out = a.project.resolve(), a.out
    out.mkdir(parents=True, exist_ok=True)
    shot: dict[str, str] = {}
    bin_dir = Path(sys.executable).parent
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        port = free_port()
        base = f"http://127.0.0.1:{port}/"
        with server([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
                     "--host", "127.0.0.1", "--port", str(port)], project, base + "health"):
            _, views = mlflow_views(project)
            for name, path, *clicks in views:
                shoot(browser, base + path, out / f"{name}.png", clicks=tuple(*clicks))
                shot[name] = "/" + path
        with tempfile.TemporaryDirectory() as tmp:
            plots = subprocess.run([str(bin_dir / "dvc"), "plots", "show", "-o", tmp], cwd=project,
                                   capture_output=True, text=True)
            if plots.returncode == 0:
                shoot(browser, (Path(tmp) / "index.html").as_uri(), out / "dvc_plots.png", settle=6, full=True)
                shot["dvc_plots"] = "dvc plots show"
        studies = sorted((project / "studies").glob("*.db"))
        if a.dashboard and studies:
            port = free_port()
            study = studies[0]
            art = project / "studies" / study.stem / "artifacts"
            with server([a.dashboard, f"sqlite:///{study}", "--artifact-dir", str(art), "--host", "127.0.0.1",
                         "--port", str(port)], project, f"http://127.0.0.1:{port}/api/studies"):
                shoot(browser, f"http://127.0.0.1:{port}/dashboard/studies/1", out / "optuna_dashboard.png")
                shoot(browser, f"http://127.0.0.1:{port}/dashboard/studies/1/trials", out / "optuna_trials.png")
                shot["optuna_dashboard"] = shot["optuna_trials"] = f"optuna-dashboard sqlite:///studies/{study.name}"
        report = project / "reports" / "index.html"
        if report.exists():
            shoot(browser, report.as_uri(), out / "report_top.png", settle=1)
            shot["report_top"] = "reports/index.html"
        browser.close()
    write_json(out / "index.json", shot)
    print("\n".join(f"{k}: {out / (k + '.png')}" for k in shot))


if __name__ == "__main__":
    main()
