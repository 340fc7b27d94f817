"""The benchmark scripts in bench/ are no package anyone imports, so nothing else would notice one that
no longer starts: each must import and answer --help."""
from __future__ import annotations

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


@pytest.mark.parametrize("module", SCRIPTS)
def test_a_bench_script_starts(module):
    before = results_state()
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=cli_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.lower().startswith("usage"), out.stderr[-2000:]
    # --help answers and runs nothing: data_stages once took "--help" for a profile, ran the data stages
    # and wrote bench/results/data_stages_--help.json, while a nested command's usage text passed this test
    assert results_state() == before, f"{module} --help wrote into bench/results"
