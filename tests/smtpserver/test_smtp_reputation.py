"""Reputation, Rejects and rulesets over real SMTP against the loopback DNS server (SPEC R3.1, R3.4,
R3.5): a sender the user marked junk is held with 451 and kept once in Rejects, every message carries
its reason, a ruleset accepts a reject into its mailbox, forwarded mail is not blamed on the forwarder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app.config import load_config
from app.db import session_scope
from app.migrate import upgrade_database
from app.models import Message, MessageSignal
from app.store.signals import SignalState, resync_signals
from tests.smtpserver.test_smtp_inbound import RUA_POLICY, SENDER, open_session, send_raw
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import (
    ThreadedSMTP,
    mailbox_id,
    make_message,
    publish_sender_domain,
    smtp_config_toml,
    stored_messages,
)

RULESETS = """
[[accounts.bob.rulesets]]
mailbox = "Forwarded"
header_regexps = { "X-Forwarded-For" = "^bob@old\\\\.example$" }
is_forward = true

[[accounts.bob.rulesets]]
mailbox = "Inbox"
header_regexps = { Subject = "^rescue me$" }
accept_rejects_to_mailbox = "Maybe"
"""


@pytest.fixture
def server(tmp_path: Path, dns: DNSTestServer) -> Iterator[ThreadedSMTP]:
    """The SMTP service with bob's rulesets (no TLS: not what these tests are about)."""
    path = write_config(tmp_path / "config", smtp_config_toml(None) + RULESETS, dns_port=dns.port)
    upgrade_database(load_config(path).resolved_database_url)
    started = ThreadedSMTP(load_config(path)).start()
    yield started
    started.stop()


def mark_junk(server: ThreadedSMTP, rows: list[Message]) -> None:
    """What the user's move or flag does (the store keeps the signal rows in step, SPEC R3.3)."""
    with session_scope(server.database_url) as session:
        session.execute(update(Message).where(Message.id.in_([r.id for r in rows])).values(junk=True))
        resync_signals(session, [SignalState(r.id, r.mailbox_orig_id, True, False) for r in rows])


def reason(content: bytes) -> str:
    (line,) = [
        h for h in content.split(b"\r\n\r\n")[0].split(b"\r\n") if h.startswith(b"X-Postwarden-Reason:")
    ]
    return line.decode().partition(": ")[2]


def test_a_sender_marked_junk_twice_is_held_with_451_and_kept_once(
    server: ThreadedSMTP, dns: DNSTestServer
) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    client = open_session(server)
    for n in range(2):
        message = make_message(SENDER, "bob@example.org", subject=f"offer {n}")
        assert send_raw(client, SENDER, ["bob@example.org"], message).startswith("250 2.0.0")
    first, second = stored_messages(server)
    assert [reason(s.content) for s in (first, second)] == ["no-bad-signals"] * 2  # nothing flagged yet
    mark_junk(server, [first.row, second.row])

    held = make_message(SENDER, "bob@example.org", subject="offer 3", message_id="<offer-3@sender.example>")
    for _attempt in range(2):  # the sender retries while bob decides: kept once (SPEC R3.1)
        reply = send_raw(client, SENDER, ["bob@example.org"], held)
        assert reply.startswith("451 4.3.0") and "held" in reply, reply
    stored = stored_messages(server)
    assert len(stored) == 3
    reject = stored[2]
    assert reject.mailbox == "Rejects" and reason(reject.content) == "msgfromfull"
    row = reject.row
    assert row.seen and row.is_reject and not row.junk and row.reason == "msgfromfull"
    assert row.mailbox_orig_id == mailbox_id(server, "bob", "Rejects")
    assert row.mailbox_destined_id == mailbox_id(server, "bob", "Inbox")
    # Accepted messages are evaluated; a junk reject is neither accepted nor DMARC's (SPEC R2.1).
    assert [e["disposition"] for e in server.evaluations] == ["none", "none"]


def test_a_reject_accepted_to_a_mailbox_is_an_accept(
    server: ThreadedSMTP, dns: DNSTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY, spf="v=spf1 -all")
    client = open_session(server)
    with caplog.at_level(logging.INFO):
        message = make_message(SENDER, "bob@example.org", subject="rescue me")
        assert send_raw(client, SENDER, ["bob@example.org"], message).startswith("250 2.0.0")
    (stored,) = stored_messages(server)
    assert (stored.mailbox, reason(stored.content)) == ("Maybe", "dmarc-policy")
    assert stored.row.seen and stored.row.is_reject and not stored.row.junk
    assert stored.row.mailbox_destined_id is None
    assert "reject accepted to mailbox" in caplog.text
    assert [(e["disposition"], e["optional"], e["override_reasons"]) for e in server.evaluations] == [
        ("none", False, ["local_policy"])
    ]


def test_a_forwarded_message_is_not_blamed_on_the_forwarder(server: ThreadedSMTP, dns: DNSTestServer) -> None:
    """The forwarder (127.0.0.1, like every test client) relays junk bob marks; his next forwarded
    mail from a new sender is still accepted, and a DMARC failure the forwarding caused is no reject."""
    forwarded = "X-Forwarded-For: bob@old.example\r\n"
    client = open_session(server)
    for n in range(12):
        spammer = f"seller{n}@spam{n}.example"
        message = make_message(spammer, "bob@example.org", extra_headers=forwarded)
        assert send_raw(client, spammer, ["bob@example.org"], message).startswith("250 2.0.0")
    spam = stored_messages(server)
    assert {s.mailbox for s in spam} == {"Forwarded"}
    mark_junk(server, [s.row for s in spam])
    with session_scope(server.database_url) as session:
        kinds = set(session.scalars(select(MessageSignal.kind)))
    assert kinds and not kinds & {"ip1", "ip2", "ip3", "ehlo", "spf"}, kinds

    publish_sender_domain(dns, "sender.example", RUA_POLICY, spf="v=spf1 -all")  # forwarding broke SPF
    message = make_message(SENDER, "bob@example.org", extra_headers=forwarded)
    assert send_raw(client, SENDER, ["bob@example.org"], message).startswith("250 2.0.0")
    last = stored_messages(server)[-1]
    assert (last.mailbox, reason(last.content), last.row.is_reject) == ("Forwarded", "no-bad-signals", False)
    assert [(e["disposition"], e["override_reasons"]) for e in server.evaluations] == [
        ("none", ["forwarded"])
    ]
