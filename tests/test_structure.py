"""The package's shape, checked: imports flow one way (no circle), no module reaches into another package's private
names, the model knows no foreign format, each shared literal has one owning module, and nothing outside the
benchmark registry branches on a benchmark's name."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "connectorlab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py") if "remote_code" not in p.parts}


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def top_level_imports(mods: dict[str, ast.Module]) -> dict[str, set[str]]:
    """What each module imports when it is imported (function bodies are deferred and do not count)."""
    graph = defaultdict(set)
    for name, tree in mods.items():
        is_package = (PACKAGE.parent / Path(*name.split("."))).is_dir()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                target = resolve(name, node, is_package)
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    graph[name].add(full if full in mods else target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names)
        graph[name] = {t for t in graph[name] if t in mods and t != name}
    return graph


def test_no_import_circle():
    graph = top_level_imports(modules())
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles[:5]


def test_no_module_imports_another_packages_private_names():
    found = []
    for name, tree in modules().items():
        package = name.split(".")[1] if name.count(".") else ""
        is_package = (PACKAGE.parent / Path(*name.split("."))).is_dir()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = resolve(name, node, is_package)
                other = target.split(".")[1] if target.count(".") else ""
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                if private and other != package:
                    found.append(f"{name}: {target}.{', '.join(private)}")
    assert not found, found


def test_the_model_knows_no_foreign_format():
    for name, tree in modules().items():
        if name.startswith("connectorlab.model"):
            imported = {resolve(name, n, False) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert not any("interop" in t for t in imported), name


OWNERS = {"<image>": "language/templates.py", "connector.safetensors": "model/mllm.py",
          "summary.json": "training/run_folder.py", "results.json": "evaluation/result.py",
          "study.json": "study/folder.py", "cell.json": "study/folder.py"}


@pytest.mark.parametrize("literal", sorted(OWNERS))
def test_each_shared_literal_has_one_owner(literal):
    """As a string constant or the start of one (`"<image>\\n..."`); prose in messages and docstrings is not layout."""
    owners = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(literal) \
                    and (node.value == literal or not node.value[len(literal):len(literal) + 1].isalnum()):
                owners.add(path.relative_to(PACKAGE).as_posix())
    assert owners <= {OWNERS[literal]}, owners


def test_only_the_registry_branches_on_a_benchmark_name():
    from connectorlab.evaluation.registry import BENCHMARKS

    names = set(BENCHMARKS)
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("evaluation/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in names
                                                     for c in [node.left, *node.comparators]):
                found.append(f"{rel}:{node.lineno}")
    assert not found, found
