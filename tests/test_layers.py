"""The package's import structure: every import (also inside functions; `if TYPE_CHECKING:` blocks aside)
points to the same layer or a lower one, and no group of modules imports itself in a loop.

The layers are those of docs/architecture.md. A new module must be given a layer here, so the picture cannot
drift from the code unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rtmo"

# (layer, module prefixes), lowest first. A prefix matches the module and everything below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("rtmo", "rtmo.config", "rtmo.ops", "rtmo.utils", "rtmo.outputs")),
    ("nn", ("rtmo.nn",)),
    ("decode", ("rtmo.decode",)),
    ("infer", ("rtmo.infer",)),
    ("export", ("rtmo.export",)),
    ("model", ("rtmo.model",)),
    ("hub", ("rtmo.hub",)),
    ("eval", ("rtmo.eval", "rtmo.benchmark", "rtmo.demo")),
    ("train", ("rtmo.train",)),
    ("serve", ("rtmo.serve",)),
    ("cli", ("rtmo.cli", "rtmo.__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest prefix that matches `module`."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """Package modules imported anywhere in the file except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            names = [base_name] + [f"{base_name}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            while parts and ".".join(parts) not in known:  # `from pkg import function` -> pkg
                parts.pop()
            target = ".".join(parts)
            # `rtmo` itself only carries __version__ and the lazy public names: importing it is no edge
            if target and target != module and target != "rtmo":
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    known = set(files)
    return {m: imports_of(p, m, known) for m, p in files.items()}


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in graph() if layer_of(m) is None)
    assert not missing, f"give these modules a layer in LAYERS (and docs/architecture.md): {missing}"


def test_imports_point_downward() -> None:
    upward = []
    for module, targets in graph().items():
        here = layer_of(module)
        for t in sorted(targets):
            there = layer_of(t)
            if here is not None and there is not None and there > here:
                upward.append(f"{module} ({LAYERS[here][0]}) imports {t} ({LAYERS[there][0]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_argparse_only_in_cli() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if module.startswith("rtmo.cli") or module == "rtmo.__main__":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "argparse" for n in names):
                offenders.append(module)
    assert not offenders, f"argparse outside rtmo/cli: {sorted(set(offenders))}"


def test_the_checker_sees_inner_and_relative_imports(tmp_path: Path) -> None:
    """The walk finds an import inside a function and resolves relative levels (else the tests above could
    pass on a package full of hidden upward imports)."""
    pkg = tmp_path / "rtmo"
    (pkg / "nn").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nn" / "__init__.py").write_text("")
    (pkg / "model.py").write_text("X = 1\n")
    src = pkg / "nn" / "head.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..hub import zoo\n"
                   "def f():\n    from ..model import X\n    return X\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        known = {"rtmo", "rtmo.nn", "rtmo.nn.head", "rtmo.model", "rtmo.hub.zoo"}
        assert imports_of(src, "rtmo.nn.head", known) == {"rtmo.model"}
    finally:
        PACKAGE = saved
    assert layer_of("rtmo.model") > layer_of("rtmo.nn.head")


def test_modules_stay_short() -> None:
    """A module over 500 lines holds more than one concept: split it (or say here why it must not be)."""
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := p.read_text().count("\n")) > 500}
    assert not long, f"modules over 500 lines: {long}"
