"""A model kind from outside the project, for the checks that it is found and trained: one module plus an
installed distribution's entry point (group ``casdm_bench.kinds``), no file of the project edited. The check
that it trains and samples through `dvc repro`: tests/test_pipeline.py, ``TestChangesToTheTinyRun``."""
from __future__ import annotations

from pathlib import Path

KIND = '''"""An L1 denoiser on the SPADE U-Net: a loss name nothing else in the suite knows."""
from benchmark.kinds.spade import SpadeKind


class SpadeL1Kind(SpadeKind):
    losses = ("l1",)

    def loss(self, model, images, labels, g, accelerator):
        r = self.forward(model, images, labels, g, accelerator)
        terms = {"l1": (r.out.float() - r.noised.target.float()).abs().mean()}
        return terms["l1"], terms
'''


def declare_kind(root: Path, name: str, module: str, cls: str, source: str) -> None:
    """``module`` written under ``root`` with an installed distribution's metadata declaring it."""
    (root / f"{module}.py").write_text(source)
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[casdm_bench.kinds]\n{name} = {module}:{cls}\n")
