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


@pytest.mark.parametrize("module", SCRIPTS)
def test_a_bench_script_starts(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=cli_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-2000:]
