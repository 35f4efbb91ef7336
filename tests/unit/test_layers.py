"""The import arrows point one way: cli -> pipelines -> deployments -> image_search, no cycles.

Every import counts, also those inside functions and under TYPE_CHECKING: a lazy import is
still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Lower layers first; a module may import its own layer and the layers before it.
LAYERS = ("image_search", "deployments", "pipelines", "cli")
JOBS = ("pipelines.backfill", "pipelines.reembed", "pipelines.reconcile", "pipelines.duplicates")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}


def imported(path: Path, known: dict[str, Path], package: str | None = None) -> Iterator[str]:
    """Modules a file imports: `from a.b import c` is a.b.c when c is a module, else a.b."""
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in known else base


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for m in imported(path, known) if m in known and m != name}
        for name, path in known.items()
    }


def layer_of(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_every_layer_has_modules() -> None:
    found = {m.split(".")[0] for m in modules()}
    assert found == set(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_no_upward_import(layer: str) -> None:
    upward = [
        f"{src} -> {dst}"
        for src, dsts in graph().items()
        if src.split(".")[0] == layer
        for dst in dsts
        if layer_of(dst) > layer_of(src)
    ]
    assert upward == []


def test_the_engine_is_ray_free() -> None:
    rayful = [
        f"{name} imports {m}"
        for name, path in modules().items()
        if name.startswith("image_search")
        for m in imported(path, {})
        if m == "ray" or m.startswith("ray.")
    ]
    assert rayful == []


def test_no_job_imports_another() -> None:
    g = graph()
    crossing = [(a, b) for a in JOBS for b in JOBS if a != b and b in g[a]]
    assert crossing == []


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(g):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_walker_sees_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "import ray.data\n"
        "def f():\n    from cli.main import main\n    from . import flows\n"
        "    from image_search import imaging\n"
    )
    found = set(imported(f, modules(), package="deployments"))
    assert found == {"ray.data", "cli.main", "deployments.flows", "image_search.imaging"}
