"""Delivery through the real path: queue rows, loopback DNS (MX, MTA-STS, DANE with the AD bit), the
real HTTPS policy server, aiosmtpd peers with real TLS, and the TLS results and DSNs it records."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import smtplib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from app.accounts import ensure_account, set_password
from app.cli import main
from app.config import Config, ConfigError, load_config
from app.db import session_scope
from app.dns import Resolver
from app.migrate import upgrade_database
from app.models import (
    Mailbox,
    Message,
    MTASTSPolicy,
    OutgoingMessage,
    SentRecipient,
    TLSFailureDetail,
    TLSResult,
)
from app.models.base import utcnow
from app.queue.content import queue_content
from app.queue.deliver import DeliveryReport, deliver, prepare_content
from app.queue.enqueue import Queued, enqueue
from app.queue.history import attempts_for
from app.queue.outgoing import remove_orphans
from tasks import delivery
from tasks.celery_app import settings
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import LOOPBACK_NETWORKS, HTTPSTestServer
from tests.support.smtpfixtures import ThreadedSMTP, client_tls_context, smtp_config_toml
from tests.support.smtppeers import (
    AlertingPeer,
    Peer,
    PeerHandler,
    expired_cert,
    self_signed,
    smtp_peer,
    spki_sha256,
)

DOMAIN = "example.net"
MX = "mx.example.net"
SENDER = "admin@example.org"
RCPT = "bob@example.net"
CONTENT = (
    b"From: Admin <admin@example.org>\r\nTo: bob@example.net\r\nSubject: Quarterly numbers\r\n"
    b"Message-ID: <q1@example.org>\r\n\r\nHello Bob.\r\n"
)


@dataclass
class World:
    """The test's config and the peers it reaches through DNS."""

    tmp: Path
    dns: DNSTestServer
    https: HTTPSTestServer
    ca: trustme.CA
    ca_file: Path
    resolver: Resolver
    config: Config | None = None
    database_url: str | None = None  # SQLite in the data dir unless given

    def configure(self, smtp_port: int, extra: str = "") -> Config:
        toml = f"""
[delivery]
smtp_port = {smtp_port}
mtasts_https_port = {self.https.port}
https_allowed_networks = {json.dumps(LOOPBACK_NETWORKS)}
ca_bundle = "{self.ca_file}"
connect_timeout = 5
command_timeout = 5
{extra}"""
        path = write_config(self.tmp / "config", toml, database_url=self.database_url, dns_port=self.dns.port)
        self.config = load_config(path)
        upgrade_database(self.config.resolved_database_url)
        return self.config

    def mx(self, *hosts: str, domain: str = DOMAIN, ip: str = "127.0.0.1") -> None:
        for preference, host in enumerate(hosts, start=1):
            self.dns.add(domain, "MX", f"{preference * 10} {host}.")
            self.dns.add(host, "A", ip)

    def mtasts(self, mode: str, mx: str = MX, domain: str = DOMAIN) -> None:
        self.dns.txt(f"_mta-sts.{domain}", "v=STSv1; id=20261125")
        self.dns.add(f"mta-sts.{domain}", "A", "127.0.0.1")
        self.https.serve(f"mta-sts.{domain}", f"version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n")

    def dane(self, tlsa: str, host: str = MX, authentic: bool = True) -> None:
        self.dns.add(f"_25._tcp.{host}", "TLSA", tlsa)
        if authentic:
            self.dns.authentic(DOMAIN)

    def queue(
        self, content: bytes = CONTENT, recipients: tuple[str, ...] = (RCPT,), **options: object
    ) -> list[int]:
        assert self.config is not None
        with session_scope(self.config.resolved_database_url) as session:
            account_id = ensure_account(session, "admin").id
            return enqueue(
                session, self.config, Queued(content, SENDER, recipients, account_id=account_id, **options)
            )

    def queue_report(
        self, kind: Literal["dmarc", "tls"], content: bytes, max_attempts: int | None = None
    ) -> int:
        assert self.config is not None
        with session_scope(self.url) as session:
            report = Queued(
                content,
                "postmaster@mail.example.org",
                [RCPT],
                kind="dmarc-report" if kind == "dmarc" else "tls-report",
                max_attempts=max_attempts,
            )
            (queue_id,) = enqueue(session, self.config, report)
        return queue_id

    async def deliver_one(
        self, peer: Peer | AlertingPeer, content: bytes = CONTENT
    ) -> tuple[int, DeliveryReport]:
        """Configure for the peer, point the domain's MX at it, queue one message, run a delivery."""
        self.configure(peer.port)
        self.mx(MX)
        (queue_id,) = self.queue(content)
        return queue_id, await self.run(queue_id)

    async def run(self, queue_id: int) -> DeliveryReport:
        assert self.config is not None
        return await deliver(self.config, queue_id, self.resolver)

    def rows(self) -> list[OutgoingMessage]:
        with session_scope(self.url) as session:
            return list(session.scalars(select(OutgoingMessage).order_by(OutgoingMessage.id)))

    def make_due(self) -> None:
        with session_scope(self.url) as session:
            session.execute(update(OutgoingMessage).values(next_attempt=utcnow()))

    def results(self) -> dict[tuple[str, bool], TLSResult]:
        with session_scope(self.url) as session:
            return {(r.policy_domain, r.is_host): r for r in session.scalars(select(TLSResult))}

    def failures(self, policy_domain: str, is_host: bool) -> list[TLSFailureDetail]:
        result = self.results()[policy_domain, is_host]
        with session_scope(self.url) as session:
            query = select(TLSFailureDetail).where(TLSFailureDetail.result_id == result.id)
            return list(session.scalars(query))

    def mailbox(self, account: str, name: str) -> list[tuple[Message, bytes]]:
        assert self.config is not None
        with session_scope(self.url) as session:
            query = (
                select(Message)
                .join(Mailbox, Message.mailbox_id == Mailbox.id)
                .where(Mailbox.name == name)
                .order_by(Message.id)
            )
            messages = list(session.scalars(query))
        return [(m, (self.config.data_dir / m.path).read_bytes()) for m in messages]

    def wait_until_no_queue_files(self, timeout: float = 5.0) -> None:
        """Finished files are removed in the background (content.remove_files_soon): poll."""
        assert self.config is not None
        directory = self.config.data_dir / "outgoing"
        deadline = time.monotonic() + timeout
        while list(directory.iterdir()):
            assert time.monotonic() < deadline, f"files left: {list(directory.iterdir())}"
            time.sleep(0.01)

    @property
    def url(self) -> str:
        assert self.config is not None
        return self.config.resolved_database_url


@pytest.fixture
def world(
    tmp_path: Path,
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    https_ca: trustme.CA,
    https_ca_file: Path,
    resolver: Resolver,
) -> Iterator[World]:
    yield World(tmp_path, dns, https_server, https_ca, https_ca_file, resolver)


def assert_failure(detail: TLSFailureDetail, result_type: str, peer: Peer | AlertingPeer) -> None:
    assert detail.result_type == result_type
    assert detail.receiving_mx_hostname == MX
    assert detail.receiving_ip == peer.address
    assert detail.sending_ip == "127.0.0.1"
    assert detail.failed_session_count == 1


def counts(result: TLSResult) -> tuple[str, int, int]:
    return result.policy_type, result.success_count, result.failure_count


# Delivery and TLS results per RFC 8460 result type (SPEC R4.7).


async def test_mtasts_enforce_with_valid_certificate_delivers_and_counts_a_success(world: World) -> None:
    with smtp_peer(world.ca.issue_cert(MX)) as peer:
        world.mtasts("enforce")
        queue_id, report = await world.deliver_one(peer)
    assert report.delivered == [queue_id]
    assert [(r.rcpt_tos, r.tls) for r in peer.received] == [([RCPT], True)]
    assert world.rows() == []
    results = world.results()
    assert counts(results[DOMAIN, False]) == ("sts", 1, 0)
    assert json.loads(results[DOMAIN, False].mx_host) == [MX]
    assert "mode: enforce" in json.loads(results[DOMAIN, False].policy_string)
    assert counts(results[MX, True]) == ("no-policy-found", 1, 0)


async def test_mtasts_enforce_with_expired_certificate_is_not_delivered_and_retried(world: World) -> None:
    with smtp_peer(expired_cert(world.ca, MX)) as peer:
        world.configure(peer.port)
        world.mx(MX)
        world.mtasts("enforce")
        (queue_id,) = world.queue()
        started = utcnow()
        report = await world.run(queue_id)
    assert report.deferred == [queue_id] and peer.received == []
    (row,) = world.rows()
    assert row.attempts == 1 and row.lease_owner is None
    assert "certificate-expired" in (row.last_error or "")
    assert started + timedelta(minutes=7) < row.next_attempt < utcnow() + timedelta(minutes=8)
    assert counts(world.results()[DOMAIN, False]) == ("sts", 0, 1)
    (detail,) = world.failures(DOMAIN, False)
    assert_failure(detail, "certificate-expired", peer)
    assert detail.receiving_mx_helo == MX
    assert "expired" in (detail.failure_reason_code or "")


async def test_mtasts_testing_with_expired_certificate_delivers_and_records_the_failure(world: World) -> None:
    with smtp_peer(expired_cert(world.ca, MX)) as peer:
        world.mtasts("testing")
        queue_id, report = await world.deliver_one(peer)
    assert report.delivered == [queue_id]
    assert [r.tls for r in peer.received] == [True]  # unverified, but still encrypted
    assert counts(world.results()[DOMAIN, False]) == ("sts", 0, 1)
    (detail,) = world.failures(DOMAIN, False)
    assert_failure(detail, "certificate-expired", peer)
    # The PKIX check was MTA-STS's: under the host's no-policy-found the session completed TLS.
    assert counts(world.results()[MX, True]) == ("no-policy-found", 1, 0)


@pytest.mark.parametrize(
    ("make_cert", "result_type"),
    [
        (lambda ca, tmp: ca.issue_cert("wrong.example.com"), "certificate-host-mismatch"),
        (lambda ca, tmp: trustme.CA().issue_cert(MX), "certificate-not-trusted"),
        (lambda ca, tmp: self_signed(tmp, MX), "certificate-not-trusted"),
    ],
    ids=["host-mismatch", "unknown-ca", "self-signed"],
)
async def test_mtasts_enforce_certificate_failures(
    world: World, make_cert: Callable[[trustme.CA, Path], object], result_type: str
) -> None:
    with smtp_peer(make_cert(world.ca, world.tmp)) as peer:  # type: ignore[arg-type]
        world.mtasts("enforce")
        queue_id, report = await world.deliver_one(peer)
    assert report.deferred == [queue_id] and peer.received == []
    (detail,) = world.failures(DOMAIN, False)
    assert_failure(detail, result_type, peer)


async def test_mtasts_enforce_without_starttls_is_starttls_not_supported(world: World) -> None:
    with smtp_peer(world.ca.issue_cert(MX), handler=PeerHandler(starttls=False)) as peer:
        world.mtasts("enforce")
        queue_id, report = await world.deliver_one(peer)
    assert report.deferred == [queue_id] and peer.received == []
    (detail,) = world.failures(DOMAIN, False)
    assert_failure(detail, "starttls-not-supported", peer)
    assert "TLS failure: starttls-not-supported" in (world.rows()[0].last_error or "")


async def test_mx_outside_an_enforced_policy_is_not_used(world: World) -> None:
    with smtp_peer(world.ca.issue_cert(MX)) as peer:
        world.mtasts("enforce", mx="mail.example.net")
        queue_id, report = await world.deliver_one(peer)
    assert report.deferred == [queue_id] and peer.received == []
    (detail,) = world.failures(DOMAIN, False)
    assert detail.result_type == "validation-failure"
    assert detail.receiving_mx_hostname == MX and detail.receiving_ip is None
    assert (MX, True) not in world.results()  # no session: nothing to say about the host's policy


async def test_dane_ee_record_for_a_self_signed_certificate_delivers(world: World) -> None:
    cert = self_signed(world.tmp, MX)
    with smtp_peer(cert) as peer:
        world.dane(f"3 1 1 {spki_sha256(cert)}")
        queue_id, report = await world.deliver_one(peer)
    assert report.delivered == [queue_id]
    assert [r.tls for r in peer.received] == [True]
    host = world.results()[MX, True]
    assert counts(host) == ("tlsa", 1, 0)
    assert json.loads(host.policy_string) == [f"3 1 1 {spki_sha256(cert).upper()}"]
    assert counts(world.results()[DOMAIN, False]) == ("no-policy-found", 1, 0)


async def test_dane_wins_over_mtasts_for_its_host(world: World) -> None:
    """A self-signed certificate would fail MTA-STS enforce; the DANE-EE record authenticates it."""
    cert = self_signed(world.tmp, MX)
    with smtp_peer(cert) as peer:
        world.mtasts("enforce")
        world.dane(f"3 1 1 {spki_sha256(cert)}")
        queue_id, report = await world.deliver_one(peer)
    assert report.delivered == [queue_id]
    assert counts(world.results()[MX, True]) == ("tlsa", 1, 0)


async def test_tlsa_mismatch_is_not_delivered(world: World) -> None:
    with smtp_peer(self_signed(world.tmp, MX)) as peer:
        world.dane("3 1 1 " + "ab" * 32)
        queue_id, report = await world.deliver_one(peer)
    assert report.deferred == [queue_id] and peer.received == []
    assert counts(world.results()[MX, True]) == ("tlsa", 0, 1)
    (detail,) = world.failures(MX, True)
    assert_failure(detail, "tlsa-invalid", peer)


async def test_a_dane_failure_is_the_tlsa_policys_only_never_also_the_sts_policys(world: World) -> None:
    with smtp_peer(self_signed(world.tmp, MX)) as peer:
        world.mtasts("enforce")
        world.dane("3 1 1 " + "ab" * 32)
        queue_id, report = await world.deliver_one(peer)
    assert report.deferred == [queue_id] and peer.received == []
    assert counts(world.results()[MX, True]) == ("tlsa", 0, 1)
    (detail,) = world.failures(MX, True)
    assert_failure(detail, "tlsa-invalid", peer)
    # DANE, not MTA-STS, rejected the session, which had negotiated TLS (SPEC R4.7).
    assert counts(world.results()[DOMAIN, False]) == ("sts", 1, 0)
    assert world.failures(DOMAIN, False) == []


async def test_tlsa_without_the_ad_bit_is_no_dane(world: World) -> None:
    with smtp_peer(self_signed(world.tmp, MX)) as peer:
        world.dane("3 1 1 " + "ab" * 32, authentic=False)  # would not match: must not be used
        queue_id, report = await world.deliver_one(peer)
    assert report.delivered == [queue_id]
    assert counts(world.results()[MX, True]) == ("no-policy-found", 1, 0)


async def test_missing_starttls_with_dane_is_starttls_not_supported(world: World) -> None:
    """RFC 8460 §4.3.1: dane-required is for DANE required by configuration without TLSA records."""
    cert = self_signed(world.tmp, MX)
    with smtp_peer(cert, handler=PeerHandler(starttls=False)) as peer:
        world.dane(f"3 1 1 {spki_sha256(cert)}")
        queue_id, report = await world.deliver_one(peer)
    assert report.deferred == [queue_id] and peer.received == []
    (detail,) = world.failures(MX, True)
    assert_failure(detail, "starttls-not-supported", peer)


async def test_failed_tlsa_lookup_in_a_signed_zone_is_dnssec_invalid(world: World) -> None:
    with smtp_peer(self_signed(world.tmp, MX)) as peer:
        world.dns.authentic(DOMAIN)
        world.dns.servfail(f"_25._tcp.{MX}")
        queue_id, report = await world.deliver_one(peer)
    assert report.deferred == [queue_id] and peer.received == []
    (detail,) = world.failures(MX, True)
    assert detail.result_type == "dnssec-invalid" and detail.receiving_mx_hostname == MX


async def test_alert_after_the_handshake_is_recorded_and_delivery_retries_in_plain_text(world: World) -> None:
    with AlertingPeer(world.ca.issue_cert(MX)) as peer:
        queue_id, report = await world.deliver_one(peer)
    assert report.delivered == [queue_id]
    assert peer.tls_attempts == 1
    assert [(r.rcpt_tos, r.tls) for r in peer.received] == [([RCPT], False)]
    (detail,) = world.failures(MX, True)
    assert_failure(detail, "validation-failure", peer)
    assert "alert certificate required" in (detail.failure_reason_code or "")
    assert counts(world.results()[DOMAIN, False]) == ("no-policy-found", 0, 1)


@pytest.mark.parametrize(
    ("serve", "result_type"),
    [
        ("404", "sts-policy-fetch-error"),
        ("invalid", "sts-policy-invalid"),
        ("bad-cert", "sts-webpki-invalid"),
    ],
)
async def test_mtasts_discovery_failures_are_recorded_and_mail_still_goes(
    world: World, serve: str, result_type: str
) -> None:
    with smtp_peer(world.ca.issue_cert(MX)) as peer:
        world.dns.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1")
        world.dns.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.1")
        if serve == "invalid":
            world.https.serve(f"mta-sts.{DOMAIN}", "version: STSv1\nmode: sometimes\n")
        elif serve == "bad-cert":
            world.https.serve(f"mta-sts.{DOMAIN}", "version: STSv1\nmode: enforce\nmx: x\nmax_age: 1\n")
            world.https.certificate(f"mta-sts.{DOMAIN}", trustme.CA().issue_cert(f"mta-sts.{DOMAIN}"))
        queue_id, report = await world.deliver_one(peer)
    assert report.delivered == [queue_id]  # no policy could be had: fail open (RFC 8461 §5)
    domain = world.results()[DOMAIN, False]
    assert counts(domain) == ("sts", 0, 1)
    (detail,) = world.failures(DOMAIN, False)
    assert detail.result_type == result_type
    assert counts(world.results()[MX, True]) == ("no-policy-found", 1, 0)


async def test_tls_required_no_delivers_despite_policy_failure_and_is_removed(world: World) -> None:
    content = CONTENT.replace(b"Subject:", b"TLS-Required: No\r\nSubject:")
    with smtp_peer(expired_cert(world.ca, MX)) as peer:
        world.mtasts("enforce")
        queue_id, report = await world.deliver_one(peer, content)
    assert report.delivered == [queue_id]
    (received,) = peer.received
    assert received.content == CONTENT  # the header field is gone, nothing else changed
    (detail,) = world.failures(DOMAIN, False)
    assert detail.result_type == "certificate-expired"


async def test_deliveries_of_tls_reports_are_not_recorded(world: World) -> None:
    content = CONTENT.replace(b"Subject:", b"TLS-Required: No\r\nSubject:")
    with smtp_peer(expired_cert(world.ca, MX)) as peer:
        world.configure(peer.port)
        world.mx(MX)
        world.mtasts("enforce")
        queue_id = world.queue_report("tls", content)
        report = await world.run(queue_id)
    assert report.delivered == [queue_id] and len(peer.received) == 1
    assert world.results() == {}


# Queue behaviour: batches, connection reuse, idempotency, fallback, recipients.


async def test_messages_to_one_domain_share_one_connection(world: World) -> None:
    with smtp_peer(world.ca.issue_cert(MX)) as peer:
        world.configure(peer.port)
        world.mx(MX)
        ids = [world.queue(CONTENT.replace(b"Quarterly", f"#{i}".encode()))[0] for i in range(4)]
        ids += world.queue(recipients=("carol@example.net", "dave@example.net"))
        report = await world.run(ids[0])
        assert sorted(report.delivered) == sorted(ids)
        assert await world.run(ids[1]) == DeliveryReport()  # already delivered: nothing to do
    assert len({r.session for r in peer.received}) == 1
    assert [r.rcpt_tos for r in peer.received][-1] == ["carol@example.net", "dave@example.net"]
    assert world.rows() == []
    assert counts(world.results()[DOMAIN, False]) == ("no-policy-found", 1, 0)  # one session
    world.wait_until_no_queue_files()


async def test_a_server_that_ends_the_session_after_some_messages_gets_a_new_connection(world: World) -> None:
    with smtp_peer(None, handler=PeerHandler(messages_per_session=2)) as peer:
        world.configure(peer.port)
        world.mx(MX)
        ids = [world.queue(recipients=(f"r{i}@example.net",))[0] for i in range(5)]
        report = await world.run(ids[0])
    assert sorted(report.delivered) == ids
    assert len(peer.received) == 5 and len({r.session for r in peer.received}) == 3
    assert counts(world.results()[DOMAIN, False]) == ("no-policy-found", 0, 3)  # 3 sessions, no STARTTLS


async def test_a_row_held_by_another_worker_is_left_alone(world: World) -> None:
    world.configure(25)
    (queue_id,) = world.queue()
    with session_scope(world.url) as session:
        session.execute(
            update(OutgoingMessage).values(lease_owner="other", lease_until=utcnow() + timedelta(minutes=5))
        )
    assert await world.run(queue_id) == DeliveryReport()
    (row,) = world.rows()
    assert (row.lease_owner, row.attempts) == ("other", 0)


async def test_a_wakeup_whose_row_was_taken_still_takes_the_domains_other_rows(world: World) -> None:
    with smtp_peer(None) as peer:
        world.configure(peer.port, "batch_size = 2")
        world.mx(MX)
        first, second, third = (world.queue(recipients=(f"r{i}@example.net",))[0] for i in range(3))
        with session_scope(world.url) as session:
            held = utcnow() + timedelta(minutes=5)
            session.execute(
                update(OutgoingMessage)
                .where(OutgoingMessage.id == first)
                .values(lease_owner="x", lease_until=held)
            )
        report = await world.run(first)
    assert report.delivered == [second, third]
    assert report.more_due is None  # nothing due and free is left (the first row is held)
    assert [r.id for r in world.rows()] == [first]


async def test_a_full_batch_names_the_next_due_row(world: World) -> None:
    with smtp_peer(None):
        world.configure(25, "batch_size = 2")
        ids = [world.queue(recipients=(f"r{i}@example.net",))[0] for i in range(3)]
        world.dns.servfail(DOMAIN)  # every attempt fails fast; the batch is still full
        report = await world.run(ids[0])
    assert report.deferred == ids[:2] and report.more_due == ids[2]


def test_orphaned_queue_files_are_removed_when_old_enough(world: World) -> None:
    config = world.configure(25)
    world.queue()
    directory = config.data_dir / "outgoing"
    (needed,) = list(directory.iterdir())
    orphan, young = directory / "orphan", directory / "young"
    orphan.write_bytes(b"x")
    young.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(orphan, (an_hour_ago, an_hour_ago))
    os.utime(needed, (an_hour_ago, an_hour_ago))
    assert remove_orphans(config, timedelta(minutes=30)) == 1
    assert sorted(p.name for p in directory.iterdir()) == sorted([needed.name, "young"])


async def test_next_mx_is_tried_when_the_first_refuses(world: World) -> None:
    with smtp_peer(world.ca.issue_cert("mx2.example.net"), address="127.0.0.2") as peer:
        world.configure(peer.port)
        # mx1 is 127.0.0.1, where nothing listens on the port; mx2 has the peer.
        world.dns.add(DOMAIN, "MX", "10 mx1.example.net.", "20 mx2.example.net.")
        world.dns.add("mx1.example.net", "A", "127.0.0.1")
        world.dns.add("mx2.example.net", "A", "127.0.0.2")
        (queue_id,) = world.queue()
        report = await world.run(queue_id)
    assert report.delivered == [queue_id] and len(peer.received) == 1


async def test_delivered_recipients_are_recorded_for_reputation(world: World) -> None:
    with smtp_peer(None) as peer:
        world.configure(peer.port)
        world.mx(MX)
        ids = world.queue(recipients=("Bob@Example.NET", "carol@example.net"))
        ids += world.queue(recipients=("Bob@Example.NET",))
        await world.run(ids[0])
    with session_scope(world.url) as session:
        rows = {r.address: r for r in session.scalars(select(SentRecipient))}
    assert set(rows) == {"Bob@example.net", "carol@example.net"}
    assert rows["Bob@example.net"].count == 2
    assert (
        rows["Bob@example.net"].domain == "example.net"
        and rows["Bob@example.net"].org_domain == "example.net"
    )


STORAGE = {"files": "", "database": '\n[storage]\ncontent = "database"\n'}


@pytest.mark.parametrize("storage", STORAGE)
async def test_an_ended_row_goes_with_its_attempt_kept_its_recipient_counted_and_its_content(
    world: World, url: str, storage: str
) -> None:
    """On PostgreSQL one statement does it all (deliver._end_at_once), on SQLite a transaction."""
    world.database_url = url
    with smtp_peer(None) as peer:
        config = world.configure(peer.port, STORAGE[storage])
        world.mx(MX)
        (queue_id,) = world.queue()
        report = await world.run(queue_id)
    assert report.delivered == [queue_id] and world.rows() == [] and len(peer.received) == 1
    with session_scope(url) as session:
        (attempt,) = attempts_for(session, queue_ids=[queue_id])
        assert (attempt.result, attempt.reply_code, attempt.recipient) == ("delivered", 250, RCPT)
        assert [(r.address, r.count) for r in session.scalars(select(SentRecipient))] == [(RCPT, 1)]
        assert queue_content(config).older_than(session, timedelta(0)) == []


@dataclass
class LeaseTakingHandler(PeerHandler):
    """Takes the message, but first another worker takes its queue row: our run's lease ran out
    while the server was slow to answer."""

    database_url: str = ""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with session_scope(self.database_url) as db:
            later = utcnow() + timedelta(minutes=5)
            db.execute(update(OutgoingMessage).values(lease_owner="other", lease_until=later))
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("storage", STORAGE)
async def test_a_row_whose_lease_was_lost_keeps_its_content_for_its_new_holder(
    world: World, url: str, storage: str
) -> None:
    world.database_url = url
    with smtp_peer(None, handler=LeaseTakingHandler(database_url=url)) as peer:
        config = world.configure(peer.port, STORAGE[storage])
        world.mx(MX)
        (queue_id,) = world.queue()
        await world.run(queue_id)
    assert len(peer.received) == 1
    (row,) = world.rows()
    assert row.lease_owner == "other"
    with session_scope(url) as session:
        assert [a.result for a in attempts_for(session, queue_ids=[queue_id])] == ["delivered"]
        assert queue_content(config).read(session, row.path) is not None


# Failures, backoff and DSNs.


def dsn_parts(raw: bytes) -> tuple[email.message.EmailMessage, str, str]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    status = parts[1].get_payload()
    status_text = "\n".join(str(block) for block in status) if isinstance(status, list) else str(status)
    return message, status_text, parts[2].get_content()  # type: ignore[return-value]


async def test_permanent_rejection_gives_a_failure_dsn_in_the_senders_inbox(world: World) -> None:
    handler = PeerHandler(rcpt_replies={RCPT: "550 5.1.1 <bob@example.net>: no such user"})
    with smtp_peer(None, handler=handler) as peer:
        queue_id, report = await world.deliver_one(peer)
    assert report.failed == [queue_id] and world.rows() == []
    ((stored, raw),) = world.mailbox("admin", "Inbox")
    assert not stored.seen
    message, status, headers = dsn_parts(raw)
    assert message["To"] == SENDER and message["Auto-Submitted"] == "auto-replied"
    assert "Quarterly numbers" in message["Subject"]
    assert stored.subject == message["Subject"], "listings show the DSN's subject"
    assert stored.message_id == message["Message-ID"]
    assert "Reporting-MTA: dns; mail.example.org" in status
    assert f"Final-Recipient: rfc822; {RCPT}" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: no such user" in status
    assert f"Remote-MTA: dns; {MX}" in status
    assert "Message-ID: <q1@example.org>" in headers and "Hello Bob" not in headers
    world.wait_until_no_queue_files()


async def test_transient_failures_back_off_then_delay_dsn_then_failure_dsn(world: World) -> None:
    handler = PeerHandler(rcpt_replies={RCPT: "451 4.3.0 try again later"})
    waits = []
    with smtp_peer(None, handler=handler) as peer:
        world.configure(peer.port)
        world.mx(MX)
        (queue_id,) = world.queue()
        for attempt in range(1, 9):
            before = utcnow()
            report = await world.run(queue_id)
            if attempt < 8:
                assert report.deferred == [queue_id]
                (row,) = world.rows()
                assert row.attempts == attempt
                waits.append(round((row.next_attempt - before).total_seconds() / 60, 1))
                inbox = world.mailbox("admin", "Inbox")
                assert len(inbox) == (1 if attempt >= 5 else 0), attempt
                world.make_due()
        assert report.failed == [queue_id]
    assert waits == [7.5, 15.0, 30.0, 60.0, 120.0, 240.0, 480.0]
    assert world.rows() == [] and peer.received == []
    (_, delay), (_, failure) = world.mailbox("admin", "Inbox")
    _, delay_status, _ = dsn_parts(delay)
    assert "Action: delayed" in delay_status and "Status: 4.3.0" in delay_status
    assert "Will-Retry-Until:" in delay_status
    _, failure_status, _ = dsn_parts(failure)
    assert (
        "Action: failed" in failure_status
        and "Diagnostic-Code: smtp; 451 4.3.0 try again later" in failure_status
    )


async def test_max_attempts_is_per_message(world: World) -> None:
    with smtp_peer(None, handler=PeerHandler(rcpt_replies={RCPT: "451 4.3.0 later"})) as peer:
        world.configure(peer.port)
        world.mx(MX)
        (queue_id,) = world.queue(max_attempts=2)
        await world.run(queue_id)
        world.make_due()
        report = await world.run(queue_id)
    assert report.failed == [queue_id]
    assert len(world.mailbox("admin", "Inbox")) == 1


async def test_failed_report_gives_a_quiet_dsn_to_the_postmaster_and_no_delay_dsn(world: World) -> None:
    with smtp_peer(None, handler=PeerHandler(rcpt_replies={RCPT: "451 4.3.0 later"})) as peer:
        world.configure(peer.port)
        world.mx(MX)
        queue_id = world.queue_report("dmarc", CONTENT, max_attempts=5)
        for _ in range(5):
            report = await world.run(queue_id)
            world.make_due()
    assert report.failed == [queue_id]
    assert world.mailbox("admin", "Inbox") == []
    ((stored, raw),) = world.mailbox("admin", "Postmaster/dmarc")
    assert stored.seen
    assert "Action: failed" in dsn_parts(raw)[1]


@pytest.mark.parametrize(
    ("records", "status"),
    [({"MX": "0 ."}, "5.1.10"), ({}, "5.1.2")],
    ids=["null-mx", "no-such-domain"],
)
async def test_undeliverable_domains_fail_at_once(world: World, records: dict[str, str], status: str) -> None:
    world.configure(25)
    world.dns.add("example.com", "A", "192.0.2.1")  # another name exists, example.net does not
    for rdtype, value in records.items():
        world.dns.add(DOMAIN, rdtype, value)
    (queue_id,) = world.queue()
    report = await world.run(queue_id)
    assert report.failed == [queue_id]
    ((_, raw),) = world.mailbox("admin", "Inbox")
    assert f"Status: {status}" in dsn_parts(raw)[1]


async def test_dns_trouble_is_temporary(world: World) -> None:
    world.configure(25)
    world.dns.servfail(DOMAIN)
    (queue_id,) = world.queue()
    report = await world.run(queue_id)
    assert report.deferred == [queue_id]
    assert "MX lookup" in (world.rows()[0].last_error or "")


async def test_smarthost_route_is_used_with_its_own_tls(world: World) -> None:
    with smtp_peer(world.ca.issue_cert("smarthost.example.org")) as peer:
        world.configure(
            25,
            f'[[delivery.routes]]\nhost = "127.0.0.1"\nport = {peer.port}\nverify_pkix = false\n',
        )
        world.mx(MX)  # not used
        world.mtasts("enforce")  # not consulted for a smarthost
        (queue_id,) = world.queue()
        report = await world.run(queue_id)
    assert report.delivered == [queue_id] and [r.tls for r in peer.received] == [True]
    assert world.results() == {}


def test_prepare_content_normalizes_line_endings_and_takes_out_tls_required() -> None:
    raw = b"Subject: x\ntls-required:\n  No\nTo: b@example.net\n\nbody\nline\n"
    content, no = prepare_content(raw)
    assert no
    assert content == b"Subject: x\r\nTo: b@example.net\r\n\r\nbody\r\nline\r\n"
    assert prepare_content(b"TLS-Required: yes\r\n\r\nx\r\n") == (b"TLS-Required: yes\r\n\r\nx\r\n", False)
    assert prepare_content(b"Subject: a\r\n\r\nTLS-Required: No\r\n") == (
        b"Subject: a\r\n\r\nTLS-Required: No\r\n",
        False,
    )


# The queue CLI.


def cli(world: World, *args: str) -> Result:
    assert world.config is not None
    return CliRunner().invoke(
        main, ["--config", str(world.tmp / "config" / "postwarden.toml"), "queue", *args]
    )


def test_queue_cli_lists_shows_retries_and_drops(world: World) -> None:
    config = world.configure(25)
    first, second = world.queue(recipients=(RCPT, "carol@example.net"))
    with session_scope(world.url) as session:
        session.execute(update(OutgoingMessage).values(next_attempt=utcnow() + timedelta(hours=1)))

    listed = cli(world, "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [(r["id"], r["recipient"], r["held"]) for r in json.loads(listed.output)] == [
        (first, RCPT, False),
        (second, "carol@example.net", False),
    ]
    text = cli(world, "list").output
    assert RCPT in text and "2 message(s) queued" in text

    shown = json.loads(cli(world, "show", str(first), "--json").output)
    assert shown["headers"]["Subject"] == "Quarterly numbers"
    assert shown["file"] == str(config.data_dir / shown["path"])
    assert cli(world, "show", "999").exit_code != 0

    assert json.loads(cli(world, "retry", str(first), "--json").output) == {"retried": [first], "skipped": []}
    rows = {r.id: r for r in world.rows()}
    assert rows[first].next_attempt <= utcnow() < rows[second].next_attempt
    assert cli(world, "retry").exit_code == 2  # neither ids nor --all

    dropped = cli(world, "drop", str(first), "999", "--json")
    assert dropped.exit_code == 1  # 999 was not queued
    assert json.loads(dropped.output) == {"dropped": [first], "skipped": [999]}
    assert [r.id for r in world.rows()] == [second]
    assert (config.data_dir / shown["path"]).exists()  # the other recipient's row still needs the file
    assert cli(world, "drop", str(second)).exit_code == 0
    assert not (config.data_dir / shown["path"]).exists()


def test_queue_cli_leaves_rows_a_worker_holds(world: World) -> None:
    world.configure(25)
    (queue_id,) = world.queue()
    with session_scope(world.url) as session:
        session.execute(
            update(OutgoingMessage).values(lease_owner="w", lease_until=utcnow() + timedelta(minutes=5))
        )
    assert json.loads(cli(world, "list", "--json").output)[0]["held"] is True
    result = cli(world, "drop", str(queue_id))
    assert result.exit_code == 1 and "being delivered right now" in result.output
    assert len(world.rows()) == 1


async def test_implicit_mx_is_the_domain_itself(world: World) -> None:
    with smtp_peer(None) as peer:
        world.configure(peer.port)
        world.dns.add(DOMAIN, "A", "127.0.0.1")  # no MX records at all (RFC 5321 §5.1)
        (queue_id,) = world.queue()
        report = await world.run(queue_id)
    assert report.delivered == [queue_id] and len(peer.received) == 1


def test_mtasts_refresh_task_updates_cached_policies(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    with smtp_peer(world.ca.issue_cert(MX)) as peer:
        world.mtasts("testing")
        queue_id, report = asyncio.run(world.deliver_one(peer))  # caches the testing policy
    assert report.delivered == [queue_id]
    world.dns.clear()
    world.dns.txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=20261126")  # a new id: the policy changed
    world.dns.add(f"mta-sts.{DOMAIN}", "A", "127.0.0.1")
    world.https.serve(f"mta-sts.{DOMAIN}", f"version: STSv1\nmode: enforce\nmx: {MX}\nmax_age: 86400\n")
    monkeypatch.setenv("POSTWARDEN_CONFIG", str(world.tmp / "config" / "postwarden.toml"))
    settings.cache_clear()
    delivery.resolver.cache_clear()
    try:
        assert delivery.refresh_mtasts_policies.run() == 1
    finally:
        settings.cache_clear()
        delivery.resolver.cache_clear()
    with session_scope(world.url) as session:
        (policy,) = session.scalars(select(MTASTSPolicy)).all()
    assert (policy.domain, policy.mode, policy.record_id) == (DOMAIN, "enforce", "20261126")


def test_a_lease_shorter_than_the_timeouts_is_fine_but_not_under_a_second(tmp_path: Path) -> None:
    # The heartbeat renews the lease during long steps (app/queue/lease.py): it need not outlast them.
    path = write_config(tmp_path, "\n[delivery]\nlease_seconds = 30\ncommand_timeout = 300\n")
    assert load_config(path).delivery.lease_seconds == 30
    path = write_config(tmp_path, "\n[delivery]\nlease_seconds = 0.5\n")
    with pytest.raises(ConfigError, match="lease_seconds"):
        load_config(path)


async def test_mail_submitted_on_the_submission_listener_reaches_the_mx_under_mtasts_enforce(
    world: World, tls_ca: trustme.CA, tls_files: tuple[Path, Path]
) -> None:
    """End to end: AUTH over STARTTLS on our submission listener, queue row, delivery to the MX."""
    with smtp_peer(world.ca.issue_cert(MX)) as peer:
        world.configure(peer.port)
        toml = (world.tmp / "config" / "postwarden.toml").read_text() + smtp_config_toml(tls_files)
        (world.tmp / "config" / "postwarden.toml").write_text(toml)
        config = load_config(world.tmp / "config" / "postwarden.toml")
        with session_scope(world.url) as session:
            set_password(session, "admin", "correct horse battery")
        world.mx(MX)
        world.mtasts("enforce")
        server = ThreadedSMTP(config).start()
        try:
            with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10) as client:
                client.starttls(context=client_tls_context(tls_ca))
                client.login("admin", "correct horse battery")
                client.sendmail(SENDER, [RCPT], CONTENT)
        finally:
            server.stop()
        (row,) = world.rows()
        assert (row.sender, row.recipient, row.account_id is not None) == (SENDER, RCPT, True)
        report = await world.run(row.id)
    assert report.delivered == [row.id]
    (received,) = peer.received
    assert received.tls and received.rcpt_tos == [RCPT]
    assert received.content.endswith(CONTENT)  # our Received trace field, then the message as submitted
    assert received.content.startswith(b"Received: ")
    assert counts(world.results()[DOMAIN, False]) == ("sts", 1, 0)
