"""Each table has one owner module that does its reads and writes: no other module of app/ or tasks/
names the model at runtime. (app/models/ defines them and migrations/ may name anything.) A model
imported under `if TYPE_CHECKING:` is allowed: it only annotates rows handed over by the owner."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("app", "tasks")
DEFINITIONS = ROOT / "app" / "models"
MODEL_MODULES = {"app.models"} | {f"app.models.{p.stem}" for p in DEFINITIONS.glob("*.py")}
# Model -> the one module (path under ROOT) that queries and changes its rows.
OWNERS = {
    "Account": "app/accounts.py",
    "Mailbox": "app/store/mailboxes.py",
    "MailboxSubscription": "app/store/mailboxes.py",
    "Message": "app/store/mailboxes.py",
    "MessageSignal": "app/store/signals.py",
    "MessageContent": "app/store/content.py",
    "OutgoingMessage": "app/queue/outgoing.py",
    "OutgoingContent": "app/queue/content.py",
    "SentRecipient": "app/queue/outgoing.py",
    "DeliveryAttempt": "app/queue/history.py",
    "MTASTSPolicy": "app/queue/mtastscache.py",
    "TLSResult": "app/tlsreports/results.py",
    "TLSFailureDetail": "app/tlsreports/results.py",
    "TLSReportPost": "app/tlsreports/posts.py",
    "DMARCEvaluation": "app/dmarcreports/evaluations.py",
    "DMARCReportClaim": "app/dmarcreports/job.py",
    "DMARCReport": "app/inreports/store.py",
    "DMARCReportRecord": "app/inreports/store.py",
    "TLSReport": "app/inreports/store.py",
    "TLSReportPolicy": "app/inreports/store.py",
    "TLSReportFailure": "app/inreports/store.py",
    "ReportIntake": "app/inreports/intake.py",
    "DMARCDayTotal": "app/inreports/store.py",
    "DMARCSourceTotal": "app/inreports/store.py",
    "DMARCSourceReporterTotal": "app/inreports/store.py",
    "DMARCReporterDay": "app/inreports/store.py",
    "TLSPolicyDay": "app/inreports/store.py",
    "TLSFailureDay": "app/inreports/store.py",
    "ReportSuppression": "app/reportsuppress.py",
    "JobRun": "app/jobs.py",
    "LoginFailure": "app/throttle.py",
    "WebSession": "app/websessions.py",
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
    """The owned models imported by name, and the local names bound to a module that defines them
    (imports under `if TYPE_CHECKING:` left out: they exist for annotations only)."""
    models: set[str] = set()
    modules: set[str] = set()
    type_only = {id(node) for block in ast.walk(tree) if _is_type_checking(block) for node in _body(block)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if node.module in MODEL_MODULES and alias.name in OWNERS:
                    models.add(alias.name)
                elif f"{node.module}.{alias.name}" in MODEL_MODULES:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name for alias in node.names if alias.name in MODEL_MODULES}
    return models, modules


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:` (its `else:` branch runs, so it stays scanned)."""
    return isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def _body(block: ast.AST) -> list[ast.AST]:
    assert isinstance(block, ast.If)
    return [node for statement in block.body for node in ast.walk(statement)]


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
        "from app.models.queue import DeliveryAttempt",
        "from app.models.tlsrpt import TLSResult as R",
        "if TYPE_CHECKING:\n    pass\nelse:\n    from app.models import JobRun",
        "if not TYPE_CHECKING:\n    from app.models import JobRun",
        "if TYPE_CHECKING:\n    from app import models\nfrom app.models import JobRun",
    ],
)
def test_every_way_of_naming_a_model_is_found(source: str) -> None:
    assert models_named(source)


@pytest.mark.parametrize(
    "source",
    [
        "from email import message\nfrom app.models.base import utcnow\n",
        "from app.models.tlsrpt import PolicyType\n",
        "if TYPE_CHECKING:\n    from app.models import Account, JobRun\ndef f(a: Account) -> None: ...\n",
        "if typing.TYPE_CHECKING:\n    from app import models\ndef f(a: models.JobRun) -> None: ...\n",
    ],
)
def test_other_names_and_type_only_imports_are_not_models(source: str) -> None:
    assert not models_named(source)


def test_every_model_has_an_owner() -> None:
    from app.models import Base

    assert set(OWNERS) == {mapper.class_.__name__ for mapper in Base.registry.mappers}
