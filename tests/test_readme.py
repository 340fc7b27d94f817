"""The README's code is code: its training-loop example runs as written, and the method's second stage
(CA-SP) is reached in it."""
from __future__ import annotations

import re

from tests.conftest import REPO


def test_the_readme_objective_example_runs():
    text = (REPO / "README.md").read_text()
    (block,) = re.findall(r"\*\*The method in your own training loop\*\*.*?```python\n(.+?)\n```", text, re.S)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["objective"].frozen is not None and {"ca_mse", "ca_sp", "sp_ratio"} <= set(scope["terms"])
    assert scope["loss"].item() > 0
