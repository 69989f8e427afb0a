"""The reputation signals of stored messages (SPEC R3.4): which signals a message has, and their rows
following the message's mailbox and flags."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.accounts import ensure_account
from app.db import session_scope
from app.models import MessageSignal
from app.store.mailboxes import add_messages, ensure_mailbox, find_message, new_message_row
from app.store.signals import SignalState, add_signals, ip_networks, resync_signals, signals_of

COLUMNS = {
    "msg_from": "Alice@Example.ORG",
    "msg_from_validated": True,
    "msg_from_domain": "example.org",
    "msg_from_org_domain": "example.org",
    "dkim_domains": "example.org mail.example.net",
    "spf_mailfrom_validated": True,
    "mail_from_domain": "bounce.example.org",
    "ehlo_validated": False,
    "ehlo": "mx.example.org",
    "remote_ip": "192.0.2.77",
}


def test_a_message_s_signals() -> None:
    assert signals_of(COLUMNS) == [
        ("from", "alice@example.org"),
        ("domain", "example.org"),
        ("orgdomain", "example.org"),
        ("dkim", "example.org"),
        ("dkim", "mail.example.net"),
        ("spf", "bounce.example.org"),
        ("ip1", "192.0.2.77/32"),
        ("ip2", "192.0.2.64/26"),
        ("ip3", "192.0.0.0/21"),
    ]


def test_an_unvalidated_from_and_a_validated_ehlo() -> None:
    found = signals_of({**COLUMNS, "msg_from_validated": False, "ehlo_validated": True})
    assert ("from-unvalidated", "alice@example.org") in found and ("ehlo", "mx.example.org") in found
    assert not any(kind == "from" for kind, _ in found)


def test_a_forwarded_message_leaves_out_its_forwarder() -> None:
    kinds = {kind for kind, _ in signals_of({**COLUMNS, "ehlo_validated": True}, forwarded=True)}
    assert kinds == {"from", "domain", "orgdomain", "dkim"}


@pytest.mark.parametrize(
    ("ip", "networks"),
    [
        ("2001:db8:1:2:3::1", ["2001:db8:1:2::/64", "2001:db8:1::/48", "2001:db8::/32"]),
        ("::ffff:198.51.100.9", ["198.51.100.9/32", "198.51.100.0/26", "198.51.96.0/21"]),
        ("not an ip", []),
        ("", []),
    ],
)
def test_ip_networks(ip: str, networks: list[str]) -> None:
    assert ip_networks(ip) == networks


def test_signal_rows_follow_their_message(sqlite_url: str) -> None:
    received = datetime(2026, 12, 1, 12, tzinfo=UTC)
    with session_scope(sqlite_url) as session:
        account_id = ensure_account(session, "alice").id
        inbox = ensure_mailbox(session, account_id, "Inbox")
        junk = ensure_mailbox(session, account_id, "Junk")
        row = new_message_row(COLUMNS, account_id=account_id, mailbox_id=inbox, destined_mailbox_id=None,
                              path="messages/20261202/f1", size=10) | {"received": received}
        add_messages(session, [row])
        stored = find_message(session, "f1")
        assert stored is not None
        add_signals(session, [(stored["id"], row, False)])
        session.flush()
        rows = session.scalars(select(MessageSignal)).all()
        assert len(rows) == 9 and all(r.mailbox_orig_id == inbox and not r.junk for r in rows)
        resync_signals(session, [SignalState(stored["id"], junk, True, False)])
        session.flush()
        session.expire_all()
        rows = session.scalars(select(MessageSignal)).all()
        assert all(r.mailbox_orig_id == junk and r.junk and not r.notjunk for r in rows)
        assert {r.received for r in rows} == {received}
