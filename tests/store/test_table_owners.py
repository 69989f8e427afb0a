"""Each table has one owner module that does its reads and writes: no other module of app/ or tasks/
names the model. (app/models/ defines them and migrations/ may name anything.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("app", "tasks")
DEFINITIONS = ROOT / "app" / "models"
MODEL_MODULES = {"app.models", "app.models.store"}
# Model -> the one module (path under ROOT) that queries and changes its rows.
OWNERS = {
    "Message": "app/store/mailboxes.py",
    "Mailbox": "app/store/mailboxes.py",
}


def models_named(source: str) -> set[str]:
    """The owned models a module names: imported from app.models, or reached through it (`models.Message`)."""
    tree = ast.parse(source)
    imported, modules = _imports(tree)
    reached = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in OWNERS and ast.unparse(node.value) in modules
    }
    return imported | reached


def _imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """The owned models imported by name, and the local names bound to a module that defines them."""
    models: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if node.module in MODEL_MODULES and alias.name in OWNERS:
                    models.add(alias.name)
                elif f"{node.module}.{alias.name}" in MODEL_MODULES:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name for alias in node.names if alias.name in MODEL_MODULES}
    return models, modules


def scanned_modules() -> list[Path]:
    return sorted(p for top in SCANNED for p in (ROOT / top).rglob("*.py") if DEFINITIONS not in p.parents)


def test_only_the_owner_module_names_its_models() -> None:
    strays = {
        f"{path.relative_to(ROOT)}: {model}"
        for path in scanned_modules()
        for model in models_named(path.read_text())
        if OWNERS[model] != str(path.relative_to(ROOT))
    }
    assert not strays, f"query these tables through their owner module ({OWNERS}): {sorted(strays)}"


def test_the_owners_are_found_naming_their_models() -> None:
    """The check sees real use: each owner module is found naming its models."""
    for owner in set(OWNERS.values()):
        expected = {model for model, module in OWNERS.items() if module == owner}
        assert models_named((ROOT / owner).read_text()) == expected


@pytest.mark.parametrize(
    "source",
    [
        "from app.models import Account, Message",
        "from app.models.store import Mailbox as Box",
        "import app.models\napp.models.Message",
        "from app import models\nmodels.Mailbox.id",
        "from app.models import store\nstore.Message",
        "import app.models.store as m\nm.Mailbox",
    ],
)
def test_every_way_of_naming_a_model_is_found(source: str) -> None:
    assert models_named(source)


def test_other_names_are_not_models() -> None:
    assert not models_named("from app.models import Account, OutgoingMessage\nfrom email import message\n")
