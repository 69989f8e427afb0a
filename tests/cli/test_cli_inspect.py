"""`postwarden mailbox list`, `message list`, `message show`: over messages stored by the real store."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.accounts import sync_from_config
from app.cli import main
from app.config import Config, load_config
from app.db import session_scope
from app.store.files import MailboxCopy, MessageStore
from tests.support.configs import write_config


def message(subject: str) -> bytes:
    headers = f"From: alice@example.net\r\nTo: admin@example.org\r\nSubject: {subject}\r\n"
    return f"{headers}\r\nBody of {subject}.\r\n".encode()


async def store_messages(config_file: Path, copies: dict[str, MailboxCopy]) -> dict[str, str]:
    """Store a `message(subject)` for each subject as that copy (accounts made from the config, the
    subject added to its columns); their file ids by subject."""
    config = load_config(config_file)
    with session_scope(config.resolved_database_url) as session:
        sync_from_config(session, config)
    store = MessageStore(config.data_dir, config.resolved_database_url)
    ids: dict[str, str] = {}
    try:
        for subject, copy in copies.items():
            copy = replace(copy, columns={"subject": subject, **copy.columns})
            (ids[subject],) = await store.store_copies(message(subject), [copy])
    finally:
        await store.close()
    return ids


@pytest.fixture
async def stored(config_file: Path) -> dict[str, str]:
    """Three messages in Inbox (one seen) and one in Junk; their file ids by subject."""
    sender = {"msg_from": "alice@example.net"}
    junk = {"junk": True, "reason": "ip1", "dmarc_result": "fail"}
    return await store_messages(
        config_file,
        {
            "first": MailboxCopy("admin", "Inbox", {**sender, "seen": True}),
            "second": MailboxCopy("admin", "Inbox", sender),
            "junky": MailboxCopy("admin", "Junk", {**sender, **junk}),
            "third": MailboxCopy("admin", "Inbox", {**sender, "msg_from_domain": "example.net"}),
        },
    )


def run(config_file: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config_file), *args])


def test_mailbox_list(config_file: Path, stored: dict[str, str]) -> None:
    result = run(config_file, "mailbox", "list", "admin")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["MAILBOX", "MESSAGES", "UNSEEN", "SIZE"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    inbox_size = sum(len(message(s)) for s in ("first", "second", "third"))
    assert rows["Inbox"] == ["3", "2", str(inbox_size)]
    assert rows["Junk"] == ["1", "1", str(len(message("junky")))]
    assert rows["Rejects"] == ["0", "0", "0"]
    # The special addresses' mailboxes exist from the config, empty.
    assert rows["Postmaster"] == ["0", "0", "0"] and rows["TLSRPT"] == ["0", "0", "0"]


def test_mailbox_list_json(config_file: Path, stored: dict[str, str]) -> None:
    result = run(config_file, "mailbox", "list", "admin", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["Inbox"] == {"name": "Inbox", "messages": 3, "unseen": 2, "size": rows["Inbox"]["size"]}
    assert rows["Rejects"] == {"name": "Rejects", "messages": 0, "unseen": 0, "size": 0}


def test_message_list_newest_first(config_file: Path, stored: dict[str, str]) -> None:
    result = run(config_file, "message", "list", "admin", "Inbox")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["ID", "RECEIVED"]
    assert [line.split()[-1] for line in lines[1:]] == ["third", "second", "first"]
    first = lines[3].split()
    assert first[3:] == ["seen", "alice@example.net", "first"]
    assert lines[1].split()[3] == "-"


def test_message_list_json_and_limit(config_file: Path, stored: dict[str, str]) -> None:
    result = run(config_file, "message", "list", "admin", "Inbox", "--json", "--limit", "2")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["subject"] for r in rows] == ["third", "second"]
    assert set(rows[0]) == {
        "id",
        "received",
        "msg_from",
        "subject",
        "size",
        "seen",
        "junk",
        "is_reject",
        "reason",
    }
    assert rows[0]["size"] == len(message("third"))
    junk = json.loads(run(config_file, "message", "list", "admin", "Junk", "--json").output)
    assert [(r["subject"], r["junk"], r["reason"]) for r in junk] == [("junky", True, "ip1")]


def test_message_list_empty_mailbox(config_file: Path, stored: dict[str, str]) -> None:
    result = run(config_file, "message", "list", "admin", "Rejects", "--json")
    assert (result.exit_code, json.loads(result.output)) == (0, [])


def test_message_show_by_id_and_file_id(config_file: Path, stored: dict[str, str]) -> None:
    listed = json.loads(run(config_file, "message", "list", "admin", "Junk", "--json").output)
    by_id = run(config_file, "message", "show", str(listed[0]["id"]))
    assert by_id.exit_code == 0, by_id.output
    assert "account: admin\n" in by_id.output
    assert "mailbox: Junk\n" in by_id.output
    assert "dmarc_result: fail\n" in by_id.output
    assert by_id.output.endswith("\n\n" + message("junky").decode().replace("\r\n", "\n"))
    by_file = run(config_file, "message", "show", stored["junky"])
    assert by_file.output == by_id.output


def test_message_show_json(config_file: Path, stored: dict[str, str]) -> None:
    config: Config = load_config(config_file)
    result = run(config_file, "message", "show", stored["third"], "--json")
    assert result.exit_code == 0, result.output
    details = json.loads(result.output)
    assert details["file_id"] == stored["third"]
    assert (details["account"], details["mailbox"], details["mailbox_orig"]) == ("admin", "Inbox", "Inbox")
    assert details["mailbox_destined"] is None
    assert details["msg_from_domain"] == "example.net"
    assert Path(details["file"]).read_bytes() == message("third")
    assert Path(details["file"]).is_relative_to(config.data_dir)


@pytest.mark.parametrize(
    ("args", "message_text"),
    [
        (["mailbox", "list", "bob"], "postwarden: no account 'bob' in the database (accounts: admin)"),
        (
            ["message", "list", "bob", "Inbox"],
            "postwarden: no account 'bob' in the database (accounts: admin)",
        ),
        (
            ["message", "list", "admin", "Archive"],
            "postwarden: account 'admin' has no mailbox 'Archive' "
            "(mailboxes: Inbox, Junk, Postmaster, Rejects, TLSRPT)",
        ),
        (["message", "show", "999999"], "postwarden: no message '999999'"),
        (["message", "show", "nosuchfile"], "postwarden: no message 'nosuchfile'"),
    ],
)
def test_not_found_is_a_clear_error(
    config_file: Path, stored: dict[str, str], args: list[str], message_text: str
) -> None:
    result = run(config_file, *args)
    assert result.exit_code == 1
    assert result.stderr.strip() == message_text
    assert "Traceback" not in result.output


def test_message_show_missing_file(config_file: Path, stored: dict[str, str]) -> None:
    details = json.loads(run(config_file, "message", "show", stored["first"], "--json").output)
    Path(details["file"]).unlink()
    result = run(config_file, "message", "show", stored["first"])
    assert result.exit_code == 1
    assert (
        f"postwarden: message {details['file']} cannot be read: No such file or directory"
        in result.stderr
    )


def test_unmigrated_database_is_a_clear_error(tmp_path: Path) -> None:
    """In a real process, as an operator runs it (the message goes to stderr, no traceback)."""
    config_file = write_config(tmp_path / "fresh")
    postwarden = Path(sys.executable).parent / "postwarden"
    result = subprocess.run(
        [postwarden, "--config", config_file, "mailbox", "list", "admin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("postwarden: database sqlite:///")
    assert "is not usable" in result.stderr and "alembic upgrade head" in result.stderr
    assert "Traceback" not in result.stderr
