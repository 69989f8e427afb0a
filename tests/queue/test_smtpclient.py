"""The SMTP client against real aiosmtpd peers on loopback with real TLS (trustme certificates)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import trustme

from app.queue.dane import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    DANE_REQUIRED,
    TLSA_INVALID,
    VALIDATION_FAILURE,
    TLSARecord,
)
from app.queue.smtpclient import (
    CERTIFICATE_NOT_TRUSTED,
    ClientOptions,
    DeliveryError,
    Session,
    Target,
    TLSError,
    TLSFailure,
    open_session,
)
from app.queue.tlspolicy import STARTTLS_NOT_SUPPORTED, TLSSettings
from tests.support.smtppeers import (
    AlertingPeer,
    Peer,
    PeerHandler,
    expired_cert,
    self_signed,
    smtp_peer,
    spki_sha256,
)

HOST = "mx.example.net"
MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nHello.\r\n.leading dot\r\n"


def tls(
    *,
    required: bool = True,
    pkix: bool = False,
    tlsa: tuple[TLSARecord, ...] = (),
    ignore: bool = False,
) -> TLSSettings:
    return TLSSettings(
        starttls_required=required,
        verify_pkix=pkix,
        verify_dane=bool(tlsa),
        ignore_verification_errors=ignore,
        server_name=HOST,
        tlsa_records=tlsa,
        dane_hostnames=(HOST,),
        starttls_missing_result=DANE_REQUIRED if tlsa else STARTTLS_NOT_SUPPORTED,
    )


REQUIRED_PKIX = tls(pkix=True)
OPPORTUNISTIC = tls(required=False)


@pytest.fixture
def options(https_ca_file: Path) -> ClientOptions:
    return ClientOptions(
        helo="mail.example.org", connect_timeout=5, command_timeout=5, ca_bundle=https_ca_file
    )


def connect(peer: Peer | AlertingPeer, settings: TLSSettings, options: ClientOptions) -> Session:
    return open_session(Target(HOST, peer.address, peer.port), settings, options)


def deliver_one(session: Session) -> None:
    try:
        results = session.send("a@example.org", ["b@example.net"], MESSAGE)
    finally:
        session.close()
    assert [r.delivered for r in results] == [True]


def test_verified_tls_delivers_the_message_intact(https_ca: trustme.CA, options: ClientOptions) -> None:
    with smtp_peer(https_ca.issue_cert(HOST)) as peer:
        session = connect(peer, REQUIRED_PKIX, options)
        assert session.info.tls_version in ("TLSv1.2", "TLSv1.3")
        assert session.info.tls_failure is None
        assert session.info.receiving_helo == HOST
        assert session.info.sending_ip == "127.0.0.1"
        deliver_one(session)
    (received,) = peer.received
    assert received.tls and received.mail_from == "a@example.org" and received.rcpt_tos == ["b@example.net"]
    assert received.content == MESSAGE  # dot-stuffing undone by the server: nothing changed


@pytest.mark.parametrize(
    ("make_cert", "result_type"),
    [
        (lambda ca, tmp: expired_cert(ca, HOST), CERTIFICATE_EXPIRED),
        (lambda ca, tmp: ca.issue_cert("other.example.com"), CERTIFICATE_HOST_MISMATCH),
        (lambda ca, tmp: trustme.CA().issue_cert(HOST), CERTIFICATE_NOT_TRUSTED),
        (lambda ca, tmp: self_signed(tmp, HOST), CERTIFICATE_NOT_TRUSTED),
    ],
    ids=["expired", "host-mismatch", "other-ca", "self-signed"],
)
def test_certificate_failures_are_classified_and_fail_when_enforced(
    make_cert, result_type: str, https_ca: trustme.CA, options: ClientOptions, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with smtp_peer(make_cert(https_ca, tmp_path)) as peer:
        with pytest.raises(TLSError) as raised:
            connect(peer, REQUIRED_PKIX, options)
        assert raised.value.failure.result_type == result_type
        assert raised.value.verification
        assert not raised.value.permanent and raised.value.status == "4.7.5"
        # Not enforced (MTA-STS testing, TLS-Required: No): recorded, then delivered over unverified TLS.
        session = connect(peer, tls(pkix=True, ignore=True), options)
        assert session.info.tls_failure is not None
        assert session.info.tls_failure.result_type == result_type
        assert session.info.tls_version is not None
        deliver_one(session)
    assert [r.tls for r in peer.received] == [True]


def test_missing_starttls_fails_when_required_and_is_recorded_when_opportunistic(
    https_ca: trustme.CA, options: ClientOptions
) -> None:
    with smtp_peer(https_ca.issue_cert(HOST), handler=PeerHandler(starttls=False)) as peer:
        with pytest.raises(TLSError) as raised:
            connect(peer, REQUIRED_PKIX, options)
        assert raised.value.failure.result_type == STARTTLS_NOT_SUPPORTED
        assert raised.value.status == "4.7.10"
        session = connect(peer, OPPORTUNISTIC, options)
        assert session.info.tls_version is None
        assert session.info.tls_failure == TLSFailure(
            STARTTLS_NOT_SUPPORTED, "STARTTLS not offered by the server"
        )
        deliver_one(session)
    assert [r.tls for r in peer.received] == [False]


def test_missing_starttls_under_dane_is_dane_required(options: ClientOptions) -> None:
    # No certificate: no STARTTLS at all.
    with smtp_peer(None) as peer, pytest.raises(TLSError) as raised:
        connect(peer, tls(tlsa=(TLSARecord(3, 1, 1, bytes(32)),)), options)
    assert raised.value.failure.result_type == DANE_REQUIRED


def test_dane_ee_record_authenticates_a_self_signed_certificate_and_a_mismatch_fails(
    options: ClientOptions, tmp_path: Path
) -> None:
    cert = self_signed(tmp_path, HOST)
    matching = TLSARecord(3, 1, 1, bytes.fromhex(spki_sha256(cert)))
    other = TLSARecord(3, 1, 1, bytes(32))
    with smtp_peer(cert) as peer:
        session = connect(peer, tls(tlsa=(matching,)), options)
        assert session.info.tls_failure is None
        deliver_one(session)
        with pytest.raises(TLSError) as raised:
            connect(peer, tls(tlsa=(other,)), options)
        assert raised.value.failure.result_type == TLSA_INVALID
        # With TLS-Required: No the mismatch is recorded and the same connection goes on.
        session = connect(peer, tls(tlsa=(other,), required=False, ignore=True), options)
        assert session.info.tls_failure is not None
        assert session.info.tls_failure.result_type == TLSA_INVALID
        deliver_one(session)
    assert [r.tls for r in peer.received] == [True, True]


def test_alert_on_first_read_after_handshake_is_a_tls_failure(
    https_ca: trustme.CA, options: ClientOptions
) -> None:
    """A TLS 1.3 server that wants a client certificate finishes the handshake, then sends an alert."""
    with AlertingPeer(https_ca.issue_cert(HOST)) as peer:
        with pytest.raises(TLSError) as raised:
            connect(peer, REQUIRED_PKIX, options)
        assert raised.value.failure.result_type == VALIDATION_FAILURE
        assert "after the handshake" in raised.value.failure.reason
        assert "alert certificate required" in raised.value.failure.reason
        # Opportunistic: the same failure is recorded and the host is retried in plain text.
        session = connect(peer, OPPORTUNISTIC, options)
        assert session.info.tls_version is None
        assert session.info.tls_failure is not None
        assert session.info.tls_failure.result_type == VALIDATION_FAILURE
        deliver_one(session)
    assert [r.tls for r in peer.received] == [False]
    assert peer.tls_attempts == 2


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_recipient_and_data_replies_are_reported_per_recipient(
    options: ClientOptions, pipelining: bool
) -> None:
    handler = PeerHandler(
        pipelining=pipelining,
        rcpt_replies={
            "gone@example.net": "550 5.1.1 no such user",
            "full@example.net": "452 4.2.2 mailbox full",
        },
    )
    with smtp_peer(None, handler=handler) as peer:
        session = connect(peer, OPPORTUNISTIC, options)
        results = session.send(
            "a@example.org", ["ok@example.net", "gone@example.net", "full@example.net"], MESSAGE
        )
        by_rcpt = {r.recipient: r for r in results}
        assert by_rcpt["ok@example.net"].delivered
        gone = by_rcpt["gone@example.net"].reply
        assert (gone.code, gone.permanent, gone.status) == (550, True, "5.1.1")
        assert gone.diagnostic == "smtp; 550 5.1.1 no such user"
        full = by_rcpt["full@example.net"].reply
        assert (full.permanent, full.status) == (False, "4.2.2")
        # Nobody accepted: no message goes out, and the session stays usable.
        nobody = session.send("a@example.org", ["gone@example.net"], MESSAGE)
        assert [r.reply.code for r in nobody] == [550]
        handler.data_reply = "451 4.3.0 try later"
        later = session.send("a@example.org", ["ok@example.net"], MESSAGE)
        assert [(r.delivered, r.reply.code, r.reply.status) for r in later] == [(False, 451, "4.3.0")]
        handler.data_reply = None
        again = session.send("a@example.org", ["ok@example.net", "other@example.net"], MESSAGE)
        assert [r.delivered for r in again] == [True, True]
        session.close()
    assert [r.rcpt_tos for r in peer.received] == [
        ["ok@example.net"],
        ["ok@example.net", "other@example.net"],
    ]
    assert [r.content for r in peer.received] == [MESSAGE, MESSAGE]


def test_a_refused_sender_fails_every_recipient(options: ClientOptions) -> None:
    class RefusingSender(PeerHandler):
        async def handle_MAIL(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
            return "550 5.7.1 sender refused"

    with smtp_peer(None, handler=RefusingSender(pipelining=True)) as peer:
        session = connect(peer, OPPORTUNISTIC, options)
        results = session.send("a@example.org", ["x@example.net", "y@example.net"], MESSAGE)
        assert [(r.recipient, r.reply.code, r.reply.status) for r in results] == [
            ("x@example.net", 550, "5.7.1"),
            ("y@example.net", 550, "5.7.1"),
        ]
        assert [r.delivered for r in session.send("a@example.org", [], MESSAGE)] == []
        session.close()
    assert peer.received == []


def test_eight_bit_message_to_a_server_without_8bitmime_fails_permanently(options: ClientOptions) -> None:
    with smtp_peer(None, handler=PeerHandler(eightbitmime=False)) as peer:
        session = connect(peer, OPPORTUNISTIC, options)
        with pytest.raises(DeliveryError) as raised:
            session.send("a@example.org", ["b@example.net"], "Subject: grüße\r\n\r\nä\r\n".encode())
        session.close()
    assert raised.value.permanent and raised.value.status == "5.6.3"
    assert peer.received == []


def test_refused_connection_is_transient(options: ClientOptions) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(DeliveryError) as raised:
            open_session(Target(HOST, "127.0.0.1", port), OPPORTUNISTIC, options)
    assert not raised.value.permanent and raised.value.status == "4.4.1"


def test_server_that_rejects_in_its_greeting(options: ClientOptions) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def greet() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"554 5.7.1 no service for you\r\n")
                conn.recv(100)

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        with pytest.raises(DeliveryError) as raised:
            open_session(Target(HOST, "127.0.0.1", port), OPPORTUNISTIC, options)
        thread.join(timeout=5)
    assert raised.value.permanent and raised.value.status == "5.7.1"
    assert raised.value.diagnostic == "smtp; 554 5.7.1 no service for you"
