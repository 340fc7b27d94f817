"""The house's layering: ``casdm`` is a library that stands alone, and imports point one way.

Imports are read with ``ast`` from the source (those inside functions too), so an import circle that
only a lazy import hides is still found; so are imports by string: in a module that imports by a
computed name (``importlib.import_module``, ``__import__``), every string naming a project module is an
arrow like an import statement, and such modules are allowed only where the strings are all there is
(``casdm/__init__.py``'s lazy exports).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("casdm", "baselines", "benchmark", "bench")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


STRING_IMPORTS_ALLOWED = {"casdm"}  # PEP 562 exports: diffusers finds classes on the package named in model_index.json


def dynamic_imports(path: Path) -> list[int]:
    """Lines of ``path`` that import by a computed name (``importlib.import_module``, ``__import__``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.append(node.lineno)
    return found


def imported(tree: ast.AST, modules: dict[str, Path], strings: bool = False) -> set[str]:
    """The project modules ``tree`` imports (``from a import b`` is ``a.b`` when that is a module); with
    ``strings``, a string constant naming a project module counts too."""
    out = set()
    for node in ast.walk(tree):
        if strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets = [node.value]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                       for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules}
    return out


def import_graph(modules: dict[str, Path], strings: bool = True) -> dict[str, set[str]]:
    """module -> the project modules it imports; in a module that imports by a computed name, a string
    that names a project module counts too (``strings=False``: only import statements)."""
    return {name: imported(ast.parse(path.read_text(), str(path)), modules,
                           strings and bool(dynamic_imports(path))) - {name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def room(module: str) -> str:
    """A module's package-level node: its top-level package, or inside ``benchmark`` its sub-package
    (``benchmark.engine``) or, for a file directly in ``benchmark/``, that file."""
    parts = module.split(".")
    if parts[0] != "benchmark" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def test_casdm_imports_nothing_of_the_harness():
    """Importing every module of the method pulls in no harness, tracker, pipeline tool or study tool."""
    mods = [m for m in project_modules() if m.split(".")[0] == "casdm"]
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
            "bad = {m for m in sys.modules if m.split('.')[0] in ('benchmark', 'baselines', 'mlflow', 'dvc', 'optuna')}\n"
            "assert not bad, sorted(bad)\n"
            "import casdm; assert casdm.SPADEUNet.__name__ == 'SPADEUNet' and casdm.MapGenPipeline\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # the same from the source: no casdm module names a project package outside casdm, even lazily
    graph = import_graph(project_modules())
    assert {(m, d) for m, deps in graph.items() if m.startswith("casdm") for d in deps
            if not d.startswith("casdm")} == set()


def test_no_import_circle_between_files_or_packages():
    modules = project_modules()
    graph = import_graph(modules)
    assert cycles(graph) == []
    rooms: dict[str, set[str]] = {}
    for m, deps in graph.items():
        rooms.setdefault(room(m), set()).update(room(d) for d in deps)
    for r, deps in rooms.items():
        deps.discard(r)
    assert cycles(rooms) == []
    # imports point one way: benchmark -> baselines -> casdm
    assert not {r for r in rooms["baselines"] if r.startswith("benchmark")}, rooms["baselines"]
    assert rooms["casdm"] == set()


def test_no_import_by_a_computed_name():
    """The registry is a dict of imported classes plus an entry-point group, never a string import that
    would hide an arrow (and a cycle) from the graph above."""
    found = {name: lines for name, path in project_modules().items()
             if name not in STRING_IMPORTS_ALLOWED and (lines := dynamic_imports(path))}
    assert found == {}


def test_the_graph_reader_finds_a_circle(tmp_path):
    """The checks above could fail: a planted two-file circle is found."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert cycles(import_graph(modules)) == [["a", "b"]]
    # the same circle closed by a string import (a registry importing packages by name) is found too
    (tmp_path / "b.py").write_text("import importlib\nPACKAGES = ('a',)\ndef f():\n    importlib.import_module(PACKAGES[0])\n")
    assert cycles(import_graph(modules)) == [["a", "b"]]
    assert dynamic_imports(tmp_path / "b.py") == [4]
    # a module name passed to a subprocess is not an import
    (tmp_path / "b.py").write_text("import subprocess\ndef f():\n    subprocess.run(['python', '-m', 'a'])\n")
    assert cycles(import_graph(modules)) == []


def test_no_private_name_is_imported_from_another_module():
    modules = project_modules()
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                found += [f"{name} <- {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []
