"""The package layout is the pipeline: imports point one way, from the CLI down to the common base, with no loops."""

from __future__ import annotations

import ast
import importlib.util
from collections import defaultdict
from pathlib import Path

import llmkit

# What each package may import (besides itself). The stages in order: config -> data -> train -> merge -> serve ->
# submit -> evaluate, each above the common base; the CLI is the only module that sees all of them (the script's
# entry above it loads it).
ALLOWED = {
    "core": set(),
    "config": {"core"},
    "data": {"core", "config"},
    "train": {"core", "config", "data"},
    "merge": {"core", "config", "data"},
    "server": {"core"},
    "submit": {"core", "config", "data", "train", "merge", "server"},
    "helm_eval": {"core", "server"},
    "cli": {"core", "config", "data", "train", "merge", "server", "submit", "helm_eval"},
    "entry": {"core", "cli"},  # the `llmkit` script: loads the CLI
    "__main__": {"entry"},  # python -m llmkit
}


def _package_dirs() -> dict[str, Path]:
    dirs = {"llmkit": Path(llmkit.__file__).parent}
    for name in ALLOWED:
        spec = importlib.util.find_spec(f"llmkit.{name}")
        assert spec is not None, f"llmkit.{name} is not importable"
        if spec.submodule_search_locations:
            dirs[f"llmkit.{name}"] = Path(next(iter(spec.submodule_search_locations)))
    return dirs


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "llmkit" and len(parts) > 1:
                continue  # a subpackage's module: listed under its own package (server/, helm_eval/ live elsewhere)
            modules[name] = path
    return modules


def _imported(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module
            )
            names |= {base or ""} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("llmkit.")}


def _layer(module: str) -> str:
    return module.split(".")[1]


def _layer_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in _modules().items():
        if module == "llmkit":
            continue
        for name in _imported(path, module):
            if _layer(name) != _layer(module) and _layer(name) in ALLOWED:
                graph[_layer(module)].add(_layer(name))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop between packages, as a path that returns to its start, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target] if target in path else [*path, target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_loop_between_packages():
    assert _cycle(_layer_graph()) is None, " -> ".join(_cycle(_layer_graph()) or [])


def test_each_package_imports_only_the_layers_below_it():
    graph = _layer_graph()
    assert set(graph) <= set(ALLOWED), f"unknown packages: {set(graph) - set(ALLOWED)}"
    wrong = {layer: sorted(graph[layer] - ALLOWED[layer]) for layer in graph if graph[layer] - ALLOWED[layer]}
    assert not wrong, f"imports against the layering (package: packages it must not import): {wrong}"


def test_the_cycle_finder_finds_a_loop():
    # The check above would pass vacuously if the finder never found anything.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_every_module_is_seen():
    names = set(_modules())
    assert {"llmkit.cli", "llmkit.core.models", "llmkit.server.app", "llmkit.helm_eval.run"} <= names
    assert all(_layer(name) in ALLOWED for name in names if name != "llmkit"), sorted(names)
