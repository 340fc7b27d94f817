"""The README's promises: two set-up commands, and CI runs exactly the README's test command."""
from __future__ import annotations

import re

from tests.conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def test_readme_has_exactly_two_setup_commands():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "dvc repro" in cmds[0] and "pytest" in cmds[1]
    assert all(c.startswith("python3.11 -m venv .venv") for c in cmds)


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_atomic_dir_removes_a_killed_writers_temp_folder_and_keeps_others(tmp_path):
    """``kill -9`` leaves ``.<out>.tmp-*`` behind; the next write of that output removes it, and
    touches neither another output's temp folder nor anything when the block fails."""
    import pytest

    from benchmark.io import atomic_dir

    out = tmp_path / "samples" / "casdm"
    stale = tmp_path / "samples" / ".casdm.tmp-dead1"
    other = tmp_path / "samples" / ".sdm.tmp-alive"
    for d in (stale, other):
        d.mkdir(parents=True)
        (d / "img.png").write_bytes(b"x")
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("done")
    assert (out / "a.txt").read_text() == "done" and not stale.exists() and other.exists()
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == [".sdm.tmp-alive", "casdm"]


def test_a_run_s_own_outputs_do_not_make_the_commit_dirty_but_code_does(tmp_path, monkeypatch):
    """The provenance tag: dvc.lock and metrics rewritten by the pipeline leave it clean; a code edit marks it."""
    import subprocess

    from benchmark.provenance import git_commit

    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    run("init", "-q")
    (tmp_path / "metrics").mkdir()
    for f in ("dvc.lock", "metrics/m.json", "code.py"):
        (tmp_path / f).write_text("0")
    run("add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    monkeypatch.chdir(tmp_path / "metrics")  # from a subfolder too
    assert not git_commit().endswith("-dirty")
    (tmp_path / "dvc.lock").write_text("1")
    (tmp_path / "metrics" / "m.json").write_text("1")
    assert not git_commit().endswith("-dirty")
    (tmp_path / "code.py").write_text("1")
    assert git_commit().endswith("-dirty")


def test_progress_lines_carry_the_time_left_at_the_pace_so_far():
    from benchmark.io import time_left

    assert time_left(1, 4, 10.0) == ", ~30 s left"  # 10 s per item, 3 to go
    assert time_left(3, 4, 9.0) == ", ~3 s left"
    assert time_left(0, 4, 5.0) == "" and time_left(4, 4, 40.0) == ""  # nothing to pace by; finished
