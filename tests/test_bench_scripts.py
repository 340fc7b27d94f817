"""The benchmark scripts in bench/ are no package anyone imports, so nothing else would notice one that
no longer starts: each must import and answer --help."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env

SCRIPTS = sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "bench").rglob("*.py")
                 if p.name != "__init__.py")


def test_every_script_is_found():
    assert {"bench.pipeline", "bench.speed", "bench.screens.budget", "bench.screens.maps"} <= set(SCRIPTS)


def results_state() -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (REPO / "bench" / "results").rglob("*") if p.is_file()}


# Every script's --help in one interpreter, one after another (runpy, as ``python -m`` runs it): a process
# of its own for each would import torch once per script.
HELP_ALL = """
import contextlib, io, json, runpy, sys, traceback
answers = {}
for module in sys.argv[1:]:
    sys.argv, text = [module, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = "returned without exiting"
    except SystemExit as exc:
        code = exc.code or 0
    except BaseException:
        code = traceback.format_exc()
    answers[module] = [code, text.getvalue()]
print("ANSWERS " + json.dumps(answers))
"""


@pytest.fixture(scope="module")
def help_answers() -> tuple[dict, dict, dict]:
    """(module -> [exit code or traceback, stdout]), and bench/results before and after."""
    before = results_state()
    out = subprocess.run([sys.executable, "-c", HELP_ALL, *SCRIPTS], cwd=REPO, env=cli_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "ANSWERS " in out.stdout, out.stderr[-2000:]
    return json.loads(out.stdout.split("ANSWERS ", 1)[1]), before, results_state()


@pytest.mark.parametrize("module", SCRIPTS)
def test_a_bench_script_starts(module, help_answers):
    answers, before, after = help_answers
    code, stdout = answers[module]
    assert code == 0 and stdout.lower().startswith("usage"), code
    # --help answers and runs nothing: data_stages once took "--help" for a profile, ran the data stages
    # and wrote bench/results/data_stages_--help.json, while a nested command's usage text passed this test
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], f"a script's --help wrote into bench/results: {changed}"
