"""Imports inside src/recpar point down the layer order of DESIGN.md, and no modules import
each other in a cycle — imports inside functions included (they hide cycles, not remove them).

LAYERS is the one written statement of the order in the project; a new top-level module or
package of recpar must be placed in it (an unplaced one fails the test).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "recpar"

LAYERS: list[set[str]] = [  # bottom -> top; a module may import its own layer or lower ones
    {"atomic_write", "rank_threads", "rank_exit", "device", "constants", "published",
     "import_without_compile"},  # small helpers
    {"model", "eval"},
    {"data", "comm", "cluster"},
    {"parallel"},
    {"train"},
    {"perfmodel"},
    {"report"},
    {"cli", "__init__", "__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path, root: Path) -> str:
    """src/recpar/a/b.py -> recpar.a.b; a package's __init__.py -> the package."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def package_of(module: str) -> str:
    """recpar.a.b -> 'a'; recpar (the package's __init__) -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, target) for every import of a recpar module in `tree`, at any depth: `import
    recpar.x`, `from recpar.x import y` (target recpar.x and recpar.x.y, since y may be a
    module) and relative imports resolved against `module`."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return [(line, t) for line, t in out if t == "recpar" or t.startswith("recpar.")]


def check(root: Path) -> list[str]:
    """Every layering violation under the package directory `root`: upward imports, modules of
    a package not placed in LAYERS, and import cycles between modules."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root): f for f in files}
    problems: list[str] = []
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        me = package_of(mod)
        if me not in LAYER_OF:
            problems.append(f"unplaced: {path.relative_to(root.parent)} ({me!r} is in no layer "
                            "of tests/test_layering.py LAYERS)")
            continue
        tree = ast.parse(path.read_text(), str(path))
        reported: set[tuple[int, str]] = set()
        for line, target in imported_modules(tree, mod, path.name == "__init__.py"):
            if target in modules and target != mod:
                edges[mod].add(target)
            other = package_of(target)
            if target == "recpar" or (line, other) in reported:
                continue  # `from recpar import x` is judged by recpar.x; one line per package
            if other in LAYER_OF and LAYER_OF[other] > LAYER_OF[me]:
                reported.add((line, other))
                problems.append(f"upward: {path.relative_to(root.parent)}:{line} ({me}, layer "
                                f"{LAYER_OF[me]}) imports {target} ({other}, layer "
                                f"{LAYER_OF[other]})")
    problems += [f"cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected set of modules that import each other (DFS)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cyc = stack[stack.index(v):] + [v]
                if not any(set(cyc) == set(c) for c in found):
                    found.append(cyc)
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_recpar_imports_point_down_and_have_no_cycles():
    problems = check(SRC)
    assert not problems, "\n".join(problems)


# --- the checker itself finds what it should ------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "recpar"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_an_upward_import_inside_a_function(tmp_path):
    root = _tree(tmp_path, {"model/__init__.py": "", "train/__init__.py": "",
                            "model/net.py": "def f():\n    from recpar.train import loop\n",
                            "train/loop.py": ""})
    problems = check(root)
    assert len(problems) == 1 and problems[0].startswith("upward: recpar/model/net.py:2")


def test_checker_finds_a_cycle_through_relative_and_package_imports(tmp_path):
    root = _tree(tmp_path, {"parallel/__init__.py": "",
                            "parallel/a.py": "from . import b\n",
                            "parallel/b.py": "def g():\n    from recpar.parallel.a import x\n"})
    assert check(root) == ["cycle: recpar.parallel.a -> recpar.parallel.b -> recpar.parallel.a"]


def test_checker_refuses_an_unplaced_package(tmp_path):
    root = _tree(tmp_path, {"utils.py": "import os\n"})
    assert check(root) == ["unplaced: recpar/utils.py ('utils' is in no layer of "
                           "tests/test_layering.py LAYERS)"]


@pytest.mark.parametrize("downward", ["from recpar.model.loss import mask_targets",
                                      "import recpar.constants"])
def test_checker_accepts_downward_imports(tmp_path, downward):
    root = _tree(tmp_path, {"model/__init__.py": "", "model/loss.py": "", "constants.py": "",
                            "parallel/__init__.py": "", "parallel/p.py": downward + "\n"})
    assert check(root) == []
