"""The report's bad inputs and its comparison logic, without a pipeline run (the tiny end-to-end test in
test_train.py builds the real page and opens it in chromium)."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.report.compare import metric_rows, resolve, State
from benchmark.report.sections import params_diff
from tests.conftest import REPO, tiny_params

BUILD = ["report", "build", "--rows", "m/evaluate", "--train-metrics", "m/train", "--sample-metrics", "m/sample",
         "--train-plots", "p/train", "--samples", "s", "--models", "models", "--data", "d", "--maps", "m/maps.json", "--studies", "studies",
         "--out", "reports", "--no-mlflow"]


def test_missing_or_broken_leaderboard_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    r = CliRunner().invoke(app, [*BUILD, "--leaderboard", "m/leaderboard.json", "--comparisons", "m/c.json"])
    assert r.exit_code == 1 and "m/leaderboard.json: missing" in r.output and "leaderboard stage" in r.output
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "leaderboard.json").write_text("{not json")
    r = CliRunner().invoke(app, [*BUILD, "--leaderboard", "m/leaderboard.json", "--comparisons", "m/c.json"])
    assert r.exit_code == 1 and "m/leaderboard.json: not valid JSON" in r.output
    assert not (tmp_path / "reports").exists()  # nothing half-written


def test_params_diff_names_changed_added_and_removed_keys():
    old = {"train": {"steps": 400, "lr": 0.0005}, "models": {"a": {"x": 1}}}
    new = {"train": {"steps": 800, "lr": 0.0005}, "models": {"b": {"x": 1}}}
    assert params_diff(old, new) == [{"key": "models.a.x", "old": 1, "new": "-"},
                                     {"key": "models.b.x", "old": "-", "new": 1},
                                     {"key": "train.steps", "old": 400, "new": 800}]


def test_metric_rows_take_b_minus_a_and_say_which_is_better():
    a = State("A", "workspace", "w", {"casdm": {"fid:x": 100.0, "fid:x_low": 95.0, "fid:x_high": 105.0,
                                                "downstream_miou": 0.5, "role": "method", "delta_miou_verdict": "better",
                                                "delta_miou": 0.1}}, {}, None)
    b = State("B", "workspace", "w", {"casdm": {"fid:x": 90.0, "fid:x_low": 80.0, "fid:x_high": 99.0,
                                                "downstream_miou": 0.4, "role": "method",
                                                "delta_miou_verdict": "worse", "delta_miou": -0.1},
                                      "sdm": {"fid:x": 1.0}}, {}, None)
    rows = {r["metric"]: r for r in metric_rows(a, b)}
    assert rows["fid:x"]["delta"] == -10.0 and rows["fid:x"]["direction"] == "B better"  # lower FID is better
    assert rows["downstream_miou"]["delta"] == pytest.approx(-0.1) and rows["downstream_miou"]["direction"] == "A better"
    assert rows["fid:x_low"]["delta"] == -15.0 and rows["fid:x_low"]["direction"] == "-"  # a bound has no better side
    # only rows both hold; text columns (role, verdicts) left out
    assert set(rows) == {"fid:x", "fid:x_low", "fid:x_high", "downstream_miou", "delta_miou"}


def _commit(repo, board: dict | None, steps: int, message: str) -> None:
    (repo / "metrics").mkdir(exist_ok=True)
    if board is not None:
        (repo / "metrics" / "leaderboard.json").write_text(json.dumps(board))
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"steps": steps}}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", message], cwd=repo, check=True)


def test_compare_two_commits_and_a_bad_name(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    _commit(tmp_path, {"casdm": {"downstream_miou": 0.5}}, 400, "first")
    _commit(tmp_path, {"casdm": {"downstream_miou": 0.6}}, 800, "second")
    tracking = tiny_params().tracking
    a, b = resolve("HEAD~1", tmp_path, tracking), resolve("HEAD", tmp_path, tracking)
    assert (a.kind, a.leaderboard["casdm"].value("downstream_miou"), b.params["train"]["steps"]) == ("git revision", 0.5, 800)
    assert a.samples is None  # no report assets committed there: the page says so
    with pytest.raises(ValueError, match=r"'nope': not a git revision, a DVC experiment or an MLflow run id"):
        resolve("nope", tmp_path, tracking)
    (tmp_path / "metrics" / "leaderboard.json").unlink()
    _commit(tmp_path, None, 800, "no leaderboard")
    with pytest.raises(FileNotFoundError, match=r"HEAD \(git revision [0-9a-f]{10}\): no metrics/leaderboard.json"):
        resolve("HEAD", tmp_path, tracking)


def test_the_html_pages_escape_every_value_they_show(tmp_path):
    """A branch, model or parameter value holding markup lands escaped in index.html (the pages are MLflow
    artifacts, opened in the tracking UI); the Markdown page keeps the text as written."""
    from benchmark.report.build import escapes, write

    evil = "<svg/onload=alert(1)>"
    side = {"spec": evil, "kind": "git revision", "ref": evil}
    ctx = {"a": side, "b": {**side, "spec": "main"}, "only": {"a": [evil], "b": []},
           "metrics": [{"model": evil, "metric": "fid", "a": 1.0, "b": 2.0, "delta": 1.0, "direction": "-"}],
           "params": params_diff({"report": {"title": evil}}, {"report": {"title": "t"}}),
           "has_samples": {"a": False, "b": False}, "title": evil, "generated": "now"}
    write(tmp_path, ctx, {}, "compare.html.j2", "compare.md.j2")
    html = (tmp_path / "index.html").read_text()
    assert evil not in html and "&lt;svg/onload=alert(1)&gt;" in html
    assert evil in (tmp_path / "report.md").read_text()  # Markdown: plain text, as written
    assert escapes("report.html.j2") and escapes("compare.html.j2") and not escapes("report.md.j2")


def test_a_storage_password_is_never_shown():
    """A PostgreSQL study storage with a password: redacted in the report's params diff (and wherever
    ``redact`` runs: the leaderboard's params.json in MLflow, error messages); the host stays readable."""
    from benchmark.provenance import redact, redact_tree

    url = "postgresql://casdm:s3cr3t-P%40ss@db.example.org:5432/optuna"
    assert redact(url) == "postgresql://casdm:***@db.example.org:5432/optuna"
    assert redact("sqlite:///studies/x.db") == "sqlite:///studies/x.db"  # nothing to hide: unchanged
    assert redact(f"no study in {url}; run it") == "no study in postgresql://casdm:***@db.example.org:5432/optuna; run it"
    diff = params_diff({"study": {"storage": None}}, {"study": {"storage": url}})
    assert "s3cr3t" not in str(diff) and diff[0]["new"].startswith("postgresql://casdm:***@")
    assert "s3cr3t" not in str(redact_tree({"study": {"storage": url}, "list": [url]}))
    # DVC and git remotes: a token as the whole user-info, a user and password, a user name alone
    assert redact("https://ghp_T0KEN@dagshub.com/lab/casdm.dvc") == "https://***@dagshub.com/lab/casdm.dvc"
    assert redact("https://lab:hunter2@webdav.example.org/dvc") == "https://lab:***@webdav.example.org/dvc"
    assert redact("ssh://git@example.org/lab/casdm") == "ssh://git@example.org/lab/casdm"
    assert redact("s3://bucket/casdm") == "s3://bucket/casdm"


def test_per_class_bars_carry_the_segmenter_seed_spread(monkeypatch):
    """Each bar's whisker is its class's sd over the downstream seeds; a class with no score gets none."""
    from matplotlib.axes import Axes

    from benchmark.report import figures

    seen = []
    real_barh = Axes.barh
    monkeypatch.setattr(Axes, "barh", lambda self, y, w, **kw: seen.append((w, kw.get("xerr"))) or real_barh(self, y, w, **kw))
    png = figures.per_class_bars({"real": {"Liver": 0.8, "Blood": None}, "casdm": {"Liver": 0.7, "Blood": 0.2}},
                                 ["Liver", "Blood"], {"Blood"}, "iou",
                                 {"real": {"Liver": 0.01, "Blood": None}, "casdm": {"Liver": 0.02, "Blood": 0.15}}, 3)
    assert png.startswith(b"\x89PNG") and sorted(seen) == [(0.2, 0.15), (0.7, 0.02), (0.8, 0.01)]
