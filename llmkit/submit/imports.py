"""What a module imports when it runs, read from its source: the image follows it to ship the server's code
(llmkit/submit/image.py), and verify-submission checks a zip's code against it (llmkit/submit/verify.py)."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator


def run_time_imports(
    tree: ast.AST, package: str, *, optional: bool
) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Each import statement of a module's syntax tree, at the top or inside functions, with the absolute name of
    the module it imports (one per name of `import a, b`; `from X import Y` gives X). Relative imports resolve
    against `package`, the module's own package.

    An import under `if TYPE_CHECKING:` never runs: left out. One in a `try:` that catches its ImportError runs
    where the module is there: given only when `optional`. A relative import above the top package is left out
    (Python raises at it; no module is named).
    """
    for node in _statements(tree, optional):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            if isinstance(node, ast.ImportFrom) and node.level:
                try:
                    name = importlib.util.resolve_name("." * node.level + name, package)
                except ImportError:
                    continue
            yield node, name


def _statements(node: ast.AST, optional: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _statements(ast.Module(body=child.orelse, type_ignores=[]), optional)
        elif not optional and isinstance(child, ast.Try) and any(map(_catches_import_error, child.handlers)):
            for handler in child.handlers:
                yield from _statements(handler, optional)
            # the else and finally clauses are statement lists: an import among them is a statement of its own
            yield from _statements(ast.Module(body=[*child.orelse, *child.finalbody], type_ignores=[]), optional)
        else:
            yield from _statements(child, optional)


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:` (True only for type checkers)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = ast.unparse(handler.type) if handler.type is not None else "BaseException"
    return any(name in caught for name in ("ImportError", "ModuleNotFoundError", "Exception"))
