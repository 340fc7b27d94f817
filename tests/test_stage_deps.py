"""Stage dependencies that are complete by construction: for every stage of dvc.yaml, the code its
command can import and the params.yaml sections it reads are computed from the source, and the test
fails when ``dvc.yaml`` lists less (a change to an unlisted file would leave the stage's cached output
beside re-run ones, mixing two versions of the code in one comparison).

Code: the command function's imports and its module's top-level imports, then every project module
those import, at module level or inside a function (the layering test's graph), and each package's
``__init__`` (not ``casdm/__init__.py``'s lazy exports: a name there is imported only when it is
used, and whoever uses it imports its module anyway). Params: ``params.<section>[.<key>]`` read in the command function and in every project
function it names (calls, or passes on), followed through those. ``runtime`` and ``tracking`` are exempt: they
say how a stage runs and where it logs, not what it computes (changing ``log_every`` re-runs nothing).
"""
from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.test_layering import import_graph, imported, project_modules

OPERATIONAL = {"runtime", "tracking"}
PLUMBING = {"benchmark.commands.common"}
# the map generator's stages read ``models`` of the params that ``benchmark.stages.mapgen.generator_params`` derives
# (its one entry is built from ``maps:``), not params.yaml's models
DERIVED = {"train-maps": {"models"}, "maps": {"models"}}  # read_params checks a model name exists; it computes nothing
PARAMS_NAMES = {"params", "p", "gp"}
SET_BY_OPTION = {"train.seed": "--seed"}  # a value the stage's command passes (the matrix's seed): no param to list  # how the code names a Params object


def cli_commands() -> dict[tuple[str, ...], object]:
    """('evaluate', 'real') -> the function ``casdm evaluate real`` runs."""
    from benchmark.cli import app

    def walk(typer_app, prefix=()):
        out = {prefix + (c.name or c.callback.__name__,): c.callback for c in typer_app.registered_commands}
        for g in typer_app.registered_groups:
            out.update(walk(g.typer_instance, prefix + (g.name,)))
        return out

    return walk(app)


@functools.cache
def parsed(path: Path) -> ast.Module:
    """One parse per file for the whole module: every stage's check walks the same ~100 trees."""
    return ast.parse(path.read_text(), str(path))


@functools.cache
def project() -> tuple[dict[str, Path], dict[str, set[str]]]:
    """The project's modules and their import graph (import statements only), built once."""
    modules = project_modules()
    return modules, import_graph(modules, strings=False)


def code_closure(fn, modules: dict, graph: dict) -> set[str]:
    """Every project module the command ``fn`` can import."""
    tree = parsed(modules[fn.__module__])
    top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    todo = [*imported(top, modules), *imported(ast.parse(textwrap.dedent(inspect.getsource(fn))), modules),
            fn.__module__]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m != fn.__module__:  # the command module's other commands' lazy imports are not this stage's
            todo += graph[m]
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules]
    return seen


def functions(modules: dict) -> dict[str, dict[str, ast.FunctionDef]]:
    out = {}
    for name, path in modules.items():
        tree = parsed(path)
        out[name] = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return out


def name_bindings(module: str, modules: dict, node: ast.AST) -> dict[str, tuple[str, str]]:
    """Local name -> (module, function) for ``from project.module import function`` in ``node``."""
    out = {}
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module in modules and n.level == 0:
            out.update({a.asname or a.name: (n.module, a.name) for a in n.names})
    return out


def params_read(fn, modules: dict) -> set[str]:
    """``section`` or ``section.key`` of every params attribute read by ``fn`` and what it calls."""
    from benchmark.config import Params

    sections, funcs = set(Params.model_fields), functions(modules)
    trees = {m: parsed(p) for m, p in modules.items()}
    module_bindings = functools.cache(lambda mod: name_bindings(mod, modules, trees[mod]))
    todo, seen, out = [(fn.__module__, fn.__name__)], set(), set()
    while todo:
        mod, name = todo.pop()
        if (mod, name) in seen or name not in funcs.get(mod, {}) or mod in PLUMBING:
            continue
        seen.add((mod, name))
        node = funcs[mod][name]
        bound = {**module_bindings(mod), **name_bindings(mod, modules, node)}
        for n in ast.walk(node):
            if isinstance(n, ast.Attribute):
                chain, root = [], n
                while isinstance(root, ast.Attribute):
                    chain.append(root.attr)
                    root = root.value
                chain.reverse()
                if isinstance(root, ast.Name) and root.id in PARAMS_NAMES and chain and chain[0] in sections:
                    field = getattr(Params.model_fields[chain[0]].annotation, "model_fields", {})
                    out.add(".".join(chain[:2]) if len(chain) > 1 and chain[1] in field else chain[0])
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):  # called, or passed on (or_fail(fn, ...))
                todo.append(bound.get(n.id, (mod, n.id)))
    return out


def resolve(text: str, item: dict, params: dict) -> str:
    """dvc.yaml's ``${item.<name>}`` (a matrix entry), ``${a.b}`` and ``${a.b[0]}`` templating."""
    for k, v in item.items():
        text = text.replace(f"${{item.{k}}}", str(v))
    while "${" in text:
        start = text.index("${")
        end = text.index("}", start)
        value = params
        for part in text[start + 2:end].split("."):
            m = re.fullmatch(r"(\w[\w-]*)\[(\d+)\]", part)
            value = value[m.group(1)][int(m.group(2))] if m else value[part]
        text = text[:start] + str(value) + text[end + 1:]
    return text


def stages() -> list[tuple[str, dict, str]]:
    """(stage name, its body with ${...} resolved for the first entry of its matrix, the command)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    out = []
    for name, st in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        assert "foreach" not in st, f"{name}: stages iterate with matrix (model x seed), not foreach"
        item = {k: next(iter(resolve_value(v, params))) for k, v in st.get("matrix", {}).items()}
        deps = [resolve(d, item, params) for d in st.get("deps", [])]
        keys = [resolve(k, item, params) for k in st.get("params", [])]
        out.append((name, {"deps": deps, "params": keys}, resolve(st["cmd"], item, params)))
    return out


def resolve_value(text: str, params: dict):
    """A matrix axis (``${models}``, ``${train.seeds}``): its value in params.yaml."""
    value = params
    for part in text.strip("${}").split("."):
        value = value[part]
    return value


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def key_covered(read: str, listed: list[str]) -> bool:
    """A read of ``a.b`` is covered by ``a`` or ``a.b`` (or a key under it) listed; a read of a section
    passed on whole (``params.a``) by any key of that section."""
    section = read.split(".")[0]
    if read == section:
        return any(k.split(".")[0] == section for k in listed)
    return section in listed or any(k == read or k.startswith(read + ".") for k in listed)


STAGES = stages()


@pytest.mark.parametrize("name,body,cmd", STAGES, ids=[s[0] for s in STAGES])
def test_each_stage_lists_the_code_it_imports_and_the_params_it_reads(name, body, cmd):
    words = cmd.split()
    assert words[0] == "casdm", f"{name}: a stage runs one casdm command"
    commands = cli_commands()
    key = tuple(w for w in words[1:3] if w in {c for k in commands for c in k})
    fn = commands.get(key) or commands[key[:1]]
    modules, graph = project()
    files = sorted(str(modules[m].relative_to(REPO)) for m in code_closure(fn, modules, graph))
    missing = [f for f in files if not covered(f, body["deps"])]
    assert missing == [], f"dvc.yaml stage {name!r} does not list code it imports: {missing}"
    reads = {r for r in params_read(fn, modules) if r.split(".")[0] not in OPERATIONAL} - DERIVED.get(name, set())
    reads -= {k for k, option in SET_BY_OPTION.items() if option in words}  # the command line carries it
    unlisted = sorted(r for r in reads if not key_covered(r, body["params"]))
    assert unlisted == [], f"dvc.yaml stage {name!r} does not list params it reads: {unlisted}"


def test_the_checks_can_fail(tmp_path):
    """A dep list without the data loader, and a params list without the section read, are caught."""
    assert not covered("benchmark/engine/data.py", ["benchmark/stages/evaluate.py", "benchmark/metrics"])
    assert covered("benchmark/engine/data.py", ["benchmark/engine"])
    assert not key_covered("study.storage", ["study.name"]) and key_covered("study.storage", ["study"])
    assert not key_covered("evaluate", ["data.resolution"]) and key_covered("evaluate", ["evaluate.fid"])
