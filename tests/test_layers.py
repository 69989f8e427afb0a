"""The layers of the code base (docs/architecture.md, "Where each concern lives"): app/ holds the mail
logic and never imports Celery, kombu or tasks/. The one exception is the composition root,
app/cli/composition.py, and there only inside functions, so only the commands that need Celery load it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
COMPOSITION_ROOT = APP / "cli" / "composition.py"
FORBIDDEN = ("celery", "kombu", "tasks")


def imported_modules(tree: ast.AST) -> Iterator[tuple[str, ast.stmt]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node


def forbidden(module: str) -> bool:
    return module.split(".")[0] in FORBIDDEN


def test_app_never_imports_celery_kombu_or_tasks_but_in_the_composition_root() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {module}"
        for path in sorted(APP.rglob("*.py"))
        if path != COMPOSITION_ROOT
        for module, node in imported_modules(ast.parse(path.read_text(), str(path)))
        if forbidden(module)
    ]
    assert found == []


def test_the_composition_root_imports_tasks_only_when_a_command_calls_it() -> None:
    tree = ast.parse(COMPOSITION_ROOT.read_text())
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    at_module_level = [
        module
        for node in tree.body
        if node not in functions
        for module, _ in imported_modules(node)
        if forbidden(module)
    ]
    assert at_module_level == []
    assert any(forbidden(module) for f in functions for module, _ in imported_modules(f)), "nothing wired"
