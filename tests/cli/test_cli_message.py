"""`postwarden message move` and `message flag` (SPEC R3.3): over messages stored by the real store,
checked through `message show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.config import load_config
from app.migrate import upgrade_database
from app.store.files import MailboxCopy
from tests.cli.test_cli_inspect import message, run, store_messages
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer

BOB = """
[accounts.bob]
addresses = ["bob@example.org"]
"""


@pytest.fixture
def config_file(tmp_path: Path, dns: DNSTestServer) -> Path:
    """The test config with a second account, bob."""
    path = write_config(tmp_path / "config", BOB, dns_port=dns.port)
    upgrade_database(load_config(path).resolved_database_url)
    return path


@pytest.fixture
async def stored(config_file: Path) -> dict[str, str]:
    """admin: a reject in Rejects (destined for Inbox) and a message in Inbox; bob and carol: one in
    Inbox each. Their file ids by subject."""
    rejected = {"is_reject": True, "seen": True}
    return await store_messages(
        config_file,
        {
            "rejected": MailboxCopy("admin", "Rejects", rejected, destined_mailbox="Inbox"),
            "hello": MailboxCopy("admin", "Inbox"),
            "bobs": MailboxCopy("bob", "Inbox"),
            "carols": MailboxCopy("carol", "Inbox"),  # an account no longer in the config
        },
    )


def show(config_file: Path, ident: str | int) -> dict[str, Any]:
    result = run(config_file, "message", "show", str(ident), "--json")
    assert result.exit_code == 0, result.output
    details: dict[str, Any] = json.loads(result.output)
    return details


def flags(details: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(details[key] for key in ("mailbox", "mailbox_orig", "is_reject", "junk", "notjunk", "seen"))


def test_moving_a_reject_to_inbox_makes_it_a_normal_delivery(
    config_file: Path, stored: dict[str, str]
) -> None:
    row_id = show(config_file, stored["rejected"])["id"]
    result = run(config_file, "message", "move", stored["rejected"], "--to", "Inbox")
    assert result.exit_code == 0, result.output
    assert result.output == f"moved 1 message(s) of admin to Inbox: {row_id}\n"
    assert flags(show(config_file, row_id)) == ("Inbox", "Inbox", False, False, True, True)


def test_copy_by_row_id_with_json(config_file: Path, stored: dict[str, str]) -> None:
    original = show(config_file, stored["hello"])
    result = run(config_file, "message", "move", str(original["id"]), "--to", "Junk", "--copy", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    (copy_id,) = out["ids"]
    assert out == {"account": "admin", "mailbox": "Junk", "copy": True, "ids": [copy_id]}
    copy = show(config_file, copy_id)
    assert flags(copy) == ("Junk", "Inbox", False, True, False, False)
    assert copy["file_id"] != original["file_id"]
    assert Path(copy["file"]).read_bytes() == message("hello")
    assert flags(show(config_file, original["id"])) == ("Inbox", "Inbox", False, False, False, False)


def test_flag(config_file: Path, stored: dict[str, str]) -> None:
    ident = stored["hello"]
    result = run(config_file, "message", "flag", ident, "--junk")
    assert (result.exit_code, result.output) == (0, "changed 1 of 1 message(s) of admin\n")
    assert flags(show(config_file, ident))[3:] == (True, False, False)
    result = run(config_file, "message", "flag", ident, stored["rejected"], "--notjunk", "--seen", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["account"], out["changed"], len(out["ids"])) == ("admin", 2, 2)
    assert flags(show(config_file, ident))[3:] == (False, True, True)
    assert run(config_file, "message", "flag", ident, "--unseen").exit_code == 0
    assert flags(show(config_file, ident))[3:] == (False, True, False)
    result = run(config_file, "message", "flag", ident)
    assert result.exit_code == 2 and "give --junk, --notjunk, --seen or --unseen" in result.output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["move", "nosuchfile", "--to", "Inbox"], "no message 'nosuchfile'"),
        (
            ["move", "{hello}", "--to", "Nope"],
            "no mailbox 'Nope' (mailboxes: Inbox, Junk, Postmaster, Rejects, TLSRPT)",
        ),
        (
            ["move", "{bobs}", "--to", "Inbox", "--account", "admin"],
            "message '{bobs}' is of account 'bob', not 'admin'",
        ),
        (
            ["flag", "{bobs}", "--junk", "--account", "admin"],
            "message '{bobs}' is of account 'bob', not 'admin'",
        ),
        (
            ["flag", "{hello}", "--junk", "--account", "dave"],
            "no account 'dave' in the database (accounts: admin, bob, carol)",
        ),
        (
            ["move", "{hello}", "{bobs}", "--to", "Inbox"],
            "the messages are of several accounts (admin, bob): give --account",
        ),
        (
            ["move", "{carols}", "--to", "Junk"],
            "account 'carol' is not in the config, so its Junk and Rejects mailboxes are unknown",
        ),
    ],
)
def test_errors_are_clear_and_change_nothing(
    config_file: Path, stored: dict[str, str], args: list[str], error: str
) -> None:
    before = {name: show(config_file, ident) for name, ident in stored.items()}
    result = run(config_file, "message", *(arg.format(**stored) for arg in args))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"postwarden: {error.format(**stored)}"
    assert "Traceback" not in result.output
    assert {name: show(config_file, ident) for name, ident in stored.items()} == before
