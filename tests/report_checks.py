"""What the end-to-end test checks of the report stage and of `casdm report compare` (tests/test_train.py
runs the tiny pipeline once and calls these on it)."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.browser import ARTIFACTS, load_page


def check_report(repo, board: dict, models: list[str], client, leaderboard_run: str) -> None:
    """The report stage's page in a real browser (Debian's chromium via Playwright), its Markdown twin,
    and its copy in the leaderboard's MLflow run."""
    html, md = repo / "reports" / "index.html", (repo / "reports" / "report.md").read_text()
    page = load_page(html, ARTIFACTS / "report-tiny.png")
    assert page["errors"] == [] and page["failed"] == [], page
    assert page["images"] and all(width > 0 for _, width in page["images"]), page["images"]
    assert sorted(page["rows"]) == sorted(board)  # one row per model, plus real, real+control and casdm+maps
    assert all(not u.startswith(("http:", "https:")) for u in page["requests"]), page["requests"]  # nothing fetched
    alts = {alt for alt, _ in page["images"]}
    assert {"ablation ladder forest plot", "per-class IoU", "test-map samples", "loss curves"} <= alts
    assert all(f"last training grid of {m}" in alts for m in models)
    assert (ARTIFACTS / "report-tiny.png").stat().st_size > 10_000
    for section in ("## Protocol", "## Headline", "## Leaderboard", "## Ablation ladder", "## Per class",
                    "## Samples", "## Training", "## Study", "## Reproduce"):
        assert section in md, section
    assert "casdm reaches downstream_miou" in md and "_Skipped: no study" in md
    # the headline names the top row on the primary metric, whatever its role, and where the method stands
    primary = "downstream_miou"
    ranked = sorted((n for n in models if board[n][primary] is not None), key=lambda n: -board[n][primary])
    assert f"The top row on {primary} is {ranked[0]} ({board[ranked[0]][primary]:.3f}" in md
    assert f"casdm ranks {ranked.index('casdm') + 1} of {len(ranked)}" in md
    assert "↓ (efficientnet_lite0)" in md and "not comparable with the Inception" in md  # labels, FID caveat
    assert "| environment | Python 3." in md and "torch threads" in md
    for link in re.findall(r"\]\((assets/[^)]+)\)", md):
        assert (repo / "reports" / link).exists(), link
    logged = {a.path for a in client.list_artifacts(leaderboard_run, "report")}
    assert {"report/index.html", "report/report.md", "report/assets"} <= logged


def _compare(repo, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["casdm", "report", "compare", *args], cwd=repo, env=env, capture_output=True, text=True)


def check_compare(repo, env: dict, leaderboard_run: str) -> None:
    """`casdm report compare` between two commits (the newer one with casdm on DPM-Solver++) and between
    a leaderboard's MLflow run and a commit: the params that differ and every metric's delta; a name that
    is none of a commit, a DVC experiment or a run is an error naming it."""
    done = _compare(repo, env, "HEAD~1", "HEAD", "--out", "cmp")
    assert done.returncode == 0, done.stderr
    page = (repo / "cmp" / "index.html").read_text()
    assert "models.casdm.sampling.scheduler" in page and "dpmsolver++" in page
    rows = re.findall(r"<tr><td>casdm</td><td>downstream_miou</td><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>", page)
    assert len(rows) == 1 and float(rows[0][2]) == pytest.approx(float(rows[0][1]) - float(rows[0][0]), abs=2e-4)
    assert "samples of a" in page and "samples of b" in page
    done = _compare(repo, env, leaderboard_run, "HEAD", "--out", "cmp-run")  # the first run's leaderboard, from MLflow
    assert done.returncode == 0, done.stderr
    page = (repo / "cmp-run" / "index.html").read_text()
    assert "MLflow run" in page and "models.casdm.sampling.scheduler" in page and "samples of a" in page
    bad = _compare(repo, env, "HEAD", "no-such-rev")
    assert bad.returncode == 1 and "'no-such-rev': not a git revision, a DVC experiment or an MLflow run id" in bad.stderr


def check_compare_experiment(repo, env: dict, experiment: str) -> None:
    """`casdm report compare` between a commit and a DVC experiment that changed one of sdm's params."""
    done = _compare(repo, env, "HEAD", experiment, "--out", "cmp-exp")
    assert done.returncode == 0, done.stderr
    page = (repo / "cmp-exp" / "index.html").read_text()
    assert "DVC experiment" in page and "models.sdm.training.drop_rate" in page

