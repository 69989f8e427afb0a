"""The aiosmtpd names outside its documented API that our SMTP layer relies on
(app/smtpserver/protocol.py AIOSMTPD_PRIVATE_NAMES): each still exists in the installed aiosmtpd, the
list names every one our code uses, and the installed version is the one pyproject.toml pins. An
aiosmtpd upgrade that renames one fails here, by name, instead of somewhere in a session."""

from __future__ import annotations

import ast
import asyncio
import tomllib
from importlib.metadata import version
from pathlib import Path

from aiosmtpd.smtp import SMTP
from packaging.requirements import Requirement

import app.smtpserver
from app.smtpserver.protocol import AIOSMTPD_PRIVATE_NAMES

SMTPSERVER = Path(app.smtpserver.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
SMTP_CLASSES = {"SMTP", "PostwardenSMTP"}  # classes whose `self` is an aiosmtpd session
SESSION_PARAMETER = "server"  # what handler hooks call the session they are given


class NoHooks:
    """A handler without hooks: aiosmtpd's own replies are all this test needs."""


async def _aiosmtpd_session_names() -> set[str]:
    """The attribute names of aiosmtpd's own SMTP class and of one of its sessions on a real loopback
    connection (some, like `_reader`, are set only once a client is connected)."""
    sessions: list[SMTP] = []

    def factory() -> SMTP:
        sessions.append(SMTP(NoHooks(), hostname="contract.test"))
        return sessions[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            greeting = await asyncio.wait_for(reader.readline(), 10)
            assert greeting.startswith(b"220 contract.test"), greeting
            names = set(dir(SMTP)) | set(vars(sessions[0]))
            writer.write(b"QUIT\r\n")
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"221")
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return names


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_session(node: ast.expr, in_smtp_class: bool) -> bool:
    """Whether `node` is an aiosmtpd session: `server`, or `self` / `super()` in an SMTP subclass."""
    if isinstance(node, ast.Name):
        return node.id == SESSION_PARAMETER or (in_smtp_class and node.id == "self")
    return in_smtp_class and isinstance(node, ast.Call) and getattr(node.func, "id", None) == "super"


def _private_names_in_source() -> tuple[set[str], set[str]]:
    """(used, defined): private attributes our smtpserver modules use on a session, and those of
    them that our code assigns or defines (its own state and methods, or overrides)."""
    used: set[str] = set()
    defined: set[str] = set()

    def visit(node: ast.AST, in_smtp_class: bool) -> None:
        if isinstance(node, ast.ClassDef):
            in_smtp_class = any(getattr(base, "id", None) in SMTP_CLASSES for base in node.bases)
            methods = [m for m in node.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
            private_methods = {m.name for m in methods if in_smtp_class and _is_private(m.name)}
            used.update(private_methods)
            defined.update(private_methods)
        session = isinstance(node, ast.Attribute) and _is_session(node.value, in_smtp_class)
        if session and _is_private(node.attr):
            used.add(node.attr)
            if isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
        for child in ast.iter_child_nodes(node):
            visit(child, in_smtp_class)

    for module in sorted(SMTPSERVER.glob("*.py")):
        visit(ast.parse(module.read_text(), str(module)), False)
    return used, defined


def test_every_listed_name_exists_in_aiosmtpd() -> None:
    aiosmtpd_names = asyncio.run(_aiosmtpd_session_names())
    missing = [name for name in AIOSMTPD_PRIVATE_NAMES if name not in aiosmtpd_names]
    assert not missing, f"aiosmtpd {version('aiosmtpd')} no longer has {missing}: see AIOSMTPD_PRIVATE_NAMES"


def test_the_list_names_every_private_aiosmtpd_name_our_code_uses() -> None:
    """A private name our code uses and does not own (aiosmtpd has it, or we only read it) must be
    listed; one listed that the code no longer uses must go (or aiosmtpd renamed it)."""
    aiosmtpd_names = asyncio.run(_aiosmtpd_session_names())
    used, defined = _private_names_in_source()
    ours = defined - aiosmtpd_names
    assert used - ours == {name for name in AIOSMTPD_PRIVATE_NAMES if _is_private(name)}


def test_the_scan_finds_the_uses_we_know_of() -> None:
    """The source scan itself: a read on `server`, a read through super(), an override, an assignment."""
    used, defined = _private_names_in_source()
    assert {"_reader", "_getaddr", "_timeout_cb", "_timeout_handle", "_data_deadline"} <= used
    assert {"_timeout_cb", "_timeout_handle", "_data_deadline"} <= defined
    assert "_reader" not in defined


def test_installed_aiosmtpd_is_the_pinned_minor_version() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if Requirement(d).name == "aiosmtpd"]
    installed = version("aiosmtpd")
    assert pin.specifier.contains(installed), f"aiosmtpd {installed} is not {pin.specifier}"
    assert "<" in str(pin.specifier), "aiosmtpd must be pinned below its next minor version"
