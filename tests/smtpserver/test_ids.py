"""Ids a user can look up (issue 9 item 11): the id an SMTP 250 reply gives is what `message show` and
`queue show` take and what the log lines carry; queue ids are never reused; `queue show` keeps each
recipient's delivery history (time, relay host and IP, TLS, reply) after delivery or failure for
`[delivery] history_days`; the success log line names the relay and its reply.

Real parts throughout: the SMTP service on loopback sockets, smtplib as the client, loopback DNS, an
aiosmtpd peer with real TLS as the receiving MX, SQLite, and the CLI through click's runner."""

from __future__ import annotations

import json
import re
import smtplib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from app.accounts import set_password
from app.cli import main
from app.config import Config, load_config
from app.db import session_scope
from app.migrate import downgrade_database, upgrade_database
from app.models.base import utcnow
from app.models.queue import DeliveryAttempt
from app.queue.enqueue import Queued, enqueue
from app.queue.history import Relay
from tests.queue import test_deliver
from tests.queue.test_deliver import MX, RCPT, SENDER, World
from tests.queue.test_delivery_faults import on_postgresql
from tests.support.logcapture import captured
from tests.support.smtpfixtures import (
    ThreadedSMTP,
    client_tls_context,
    make_message,
    smtp_config_toml,
    stored_messages,
)
from tests.support.smtppeers import PeerHandler, smtp_peer

PASSWORD = "correct horse battery"
CAROL = "carol@example.net"
REPLY_ID = re.compile(r"id ([0-9a-f]+)$")


# test_deliver's fixture: the config, loopback DNS and HTTPS policy server a delivery needs.
world = test_deliver.world


def cli(config_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config_path), *args])


def cli_json(config_path: Path, *args: str) -> Any:
    result = cli(config_path, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def reply_id(reply: bytes) -> str:
    match = REPLY_ID.search(reply.decode())
    assert match, reply
    return match[1]


# Inbound: the 250's id is the stored message's.


def test_inbound_reply_id_is_what_message_show_takes_and_the_log_carries(smtp: ThreadedSMTP) -> None:
    message = make_message("alice@sender.example", "admin@example.org", subject="Lookup")
    with (
        captured("app.smtpserver") as log,
        smtplib.SMTP("127.0.0.1", smtp.inbound_port, timeout=10) as client,
    ):
        client.ehlo("client.sender.example")
        client.mail("alice@sender.example")
        client.rcpt("admin@example.org")
        client.rcpt("bob@example.org")  # another account: a second copy, in its own Inbox
        code, reply = client.data(message)
    assert code == 250
    transaction = reply_id(reply)
    copies = stored_messages(smtp)
    assert [s.row.file_id for s in copies] == [transaction, f"{transaction}-2"]

    config_path = smtp.config.data_dir.parent / "postwarden.toml"
    shown = cli_json(config_path, "message", "show", transaction)
    assert (shown["file_id"], shown["account"], shown["subject"]) == (transaction, "admin", "Lookup")
    assert shown["other_copies"] == [f"{transaction}-2"]
    second = cli_json(config_path, "message", "show", f"{transaction}-2")
    assert (second["account"], second["other_copies"]) == ("bob", [transaction])
    text = cli(config_path, "message", "show", transaction)
    assert text.exit_code == 0 and "Subject: Lookup" in text.output

    (line,) = log.messages("inbound transaction")
    assert f"message_id={transaction} " in line and "result=accepted" in line


def test_an_id_no_row_has_is_a_clear_error(smtp: ThreadedSMTP) -> None:
    config_path = smtp.config.data_dir.parent / "postwarden.toml"
    for args in (
        ("message", "show", "0661a12ca06bb9"),
        ("message", "show", "9" * 40),
        ("queue", "show", "²"),
    ):
        result = cli(config_path, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "no " in result.output and "Traceback" not in result.output


# Submission: the 250's id finds the queue rows, then their delivery history.


@pytest.fixture
def submitted(world: World, tls_ca: trustme.CA, tls_files: tuple[Path, Path]) -> Iterator[SubmissionWorld]:
    yield SubmissionWorld(world, tls_ca, tls_files)


class SubmissionWorld:
    """The submission listener and delivery to an MX peer, sharing one config and database."""

    def __init__(self, world: World, tls_ca: trustme.CA, tls_files: tuple[Path, Path]) -> None:
        self.world, self.tls_ca, self.tls_files = world, tls_ca, tls_files
        self.config_path = world.tmp / "config" / "postwarden.toml"

    def configure(self, peer_port: int, extra: str = "") -> Config:
        self.world.configure(peer_port, extra)
        self.config_path.write_text(self.config_path.read_text() + smtp_config_toml(self.tls_files))
        config = load_config(self.config_path)
        with session_scope(config.resolved_database_url) as session:
            set_password(session, "admin", PASSWORD)
        self.world.mx(MX)
        return config

    def submit(self, config: Config, recipients: list[str]) -> str:
        """Send a message on the submission listener; the id its 250 reply gave."""
        server = ThreadedSMTP(config).start()
        try:
            with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10) as client:
                client.starttls(context=client_tls_context(self.tls_ca))
                client.login("admin", PASSWORD)
                client.mail(SENDER)
                for recipient in recipients:
                    client.rcpt(recipient)
                code, reply = client.data(make_message(SENDER, recipients[0], subject="Tracked"))
        finally:
            server.stop()
        assert code == 250, reply
        return reply_id(reply)

    def show(self, ident: str) -> Any:
        return cli_json(self.config_path, "queue", "show", ident)


async def test_submission_id_finds_the_queue_rows_and_their_history_after_delivery_and_failure(
    submitted: SubmissionWorld,
) -> None:
    world = submitted.world
    handler = PeerHandler(rcpt_replies={CAROL: "550 5.1.1 <carol@example.net>: no such user"})
    with smtp_peer(world.ca.issue_cert(MX), handler=handler) as peer:
        config = submitted.configure(peer.port)
        with captured("app.smtpserver") as smtp_log:
            transaction = submitted.submit(config, [RCPT, CAROL])
        assert f"message_id={transaction} " in smtp_log.messages("submission transaction")[0]

        queued = submitted.show(transaction)
        assert [(e["recipient"], e["state"], e["file_id"], e["history"]) for e in queued] == [
            (RCPT, "queued", transaction, []),
            (CAROL, "queued", transaction, []),
        ]
        assert queued[0]["headers"]["Subject"] == "Tracked"
        bob_id, carol_id = (e["id"] for e in queued)
        with captured("app.queue") as log:
            report = await world.run(bob_id)
    assert (report.delivered, report.failed) == ([bob_id], [carol_id])
    assert world.rows() == []

    delivered, failed = submitted.show(transaction)
    assert (delivered["id"], delivered["state"], failed["id"], failed["state"]) == (
        bob_id,
        "delivered",
        carol_id,
        "failed",
    )
    (attempt,) = delivered["history"]
    assert (attempt["recipient"], attempt["host"], attempt["ip"], attempt["result"]) == (
        RCPT,
        MX,
        "127.0.0.1",
        "delivered",
    )
    assert attempt["tls"].startswith("TLSv1.") and attempt["reply_code"] == 250
    assert attempt["reply"] == "2.0.0 OK queued"
    (refused,) = failed["history"]
    assert (refused["reply_code"], refused["result"], refused["host"]) == (550, "failed", MX)
    assert refused["reply"] == "5.1.1 <carol@example.net>: no such user"
    # By queue id too, once the row is gone.
    assert submitted.show(str(bob_id))["history"] == delivered["history"]
    text = cli(submitted.config_path, "queue", "show", transaction).output
    assert f"delivered relay={MX} ip=127.0.0.1 tls=TLSv1." in text and "reply: 250 2.0.0 OK queued" in text

    (success,) = log.messages("delivery delivered")
    assert f"queue_id={bob_id} message_id={transaction} to=<{RCPT}> " in success
    assert f" relay={MX} ip=127.0.0.1 tls=TLSv1." in success
    assert success.endswith("reply='250 2.0.0 OK queued'")
    (failure,) = log.messages("delivery failed")
    assert f"queue_id={carol_id} message_id={transaction} " in failure


async def test_history_of_a_host_that_cannot_be_reached_and_of_a_deferral(submitted: SubmissionWorld) -> None:
    world = submitted.world
    with smtp_peer(None, handler=PeerHandler(rcpt_replies={RCPT: "451 4.3.0 try again later"})) as peer:
        config = submitted.configure(peer.port)
        transaction = submitted.submit(config, [RCPT])
        (row,) = world.rows()
        await world.run(row.id)
    world.make_due()
    await world.run(row.id)  # the peer is gone: nothing listens on its port
    (entry,) = submitted.show(transaction)
    assert entry["state"] == "queued" and entry["attempts"] == 2
    deferred, unreachable = entry["history"]
    assert (deferred["reply_code"], deferred["reply"], deferred["ip"]) == (
        451,
        "4.3.0 try again later",
        "127.0.0.1",
    )
    assert deferred["tls"].startswith("none")  # the peer offers no STARTTLS
    assert (unreachable["host"], unreachable["reply_code"], unreachable["result"]) == (MX, None, "deferred")
    assert "127.0.0.1" in unreachable["reply"] and unreachable["attempted"] > deferred["attempted"]


async def test_the_success_log_line_cuts_and_quotes_the_relays_reply(submitted: SubmissionWorld) -> None:
    long_reply = "250 2.0.0 " + "x" * 400 + " 'quoted' \x1b[31m"
    world = submitted.world
    with smtp_peer(None, handler=PeerHandler(data_reply=long_reply)) as peer:
        submitted.configure(peer.port)
        (queue_id,) = world.queue()
        with captured("app.queue") as log:
            await world.run(queue_id)
    (line,) = log.messages("delivery delivered")
    shown = line.partition("reply=")[2]
    assert shown.startswith("'250 2.0.0 xxx") and len(shown) <= 200 + 3  # the quotes, and repr's escape
    assert "\x1b" not in line
    (kept,) = submitted.show(str(queue_id))["history"]
    assert len(kept["reply"]) <= 512 and "\x1b" not in kept["reply"]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_history_is_pruned_after_history_days(
    submitted: SubmissionWorld, database: str, request: pytest.FixtureRequest
) -> None:
    world = submitted.world
    with smtp_peer(None) as peer:
        config = submitted.configure(peer.port, "history_days = 2\n")
        if database == "postgresql":
            url = request.getfixturevalue("postgres_url")
            on_postgresql(world, url)
            text = submitted.config_path.read_text()
            submitted.config_path.write_text(text.replace(config.database_url, url))  # for the CLI
        (old,) = world.queue()
        await world.run(old)
        with session_scope(world.url) as session:
            moved = update(DeliveryAttempt).values(attempted=utcnow() - timedelta(days=2, minutes=1))
            session.execute(moved)
        assert submitted.show(str(old))["state"] == "delivered"  # older than kept, not yet pruned
        (recent,) = world.queue()
        await world.run(recent)  # a run prunes first
    with session_scope(world.url) as session:
        assert list(session.scalars(select(DeliveryAttempt.queue_id))) == [recent]
    gone = cli(submitted.config_path, "queue", "show", str(old))
    assert gone.exit_code == 1 and "no queued message or delivery history" in gone.output


# Queue ids are never reused.


def test_queue_ids_are_not_reused_after_deletes_on_sqlite(world: World) -> None:
    """Even for a database made before AUTOINCREMENT: the migration rebuilds the table, rows kept."""
    config = world.configure(25)
    downgrade_database(world.url, "0006")
    first, second = world.queue(recipients=(RCPT, CAROL))
    upgrade_database(world.url)
    assert [(r.id, r.recipient) for r in world.rows()] == [(first, RCPT), (second, CAROL)]

    config_path = world.tmp / "config" / "postwarden.toml"
    assert cli(config_path, "queue", "drop", str(second)).exit_code == 0
    (third,) = world.queue()
    assert third > second
    assert cli(config_path, "queue", "drop", str(first), str(third)).exit_code == 0
    with session_scope(world.url) as session:
        (fourth,) = enqueue(session, config, Queued(b"Subject: x\r\n\r\nx\r\n", SENDER, [RCPT]))
    assert fourth > third


def test_a_relay_name_longer_than_its_column_is_cut() -> None:
    """An MX name in presentation form (\\DDD escapes) can outgrow DeliveryAttempt.host; PostgreSQL would
    refuse the row, and with it the delivery's outcome."""
    name = "\\000" * 80 + ".mx.example"
    assert len(Relay.of(name, None).host or "") == DeliveryAttempt.host.type.length == 255
