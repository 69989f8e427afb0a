"""Chaos (issue 9, item 8): the SMTP process group, a Celery worker and the Redis broker each killed with
SIGKILL and restarted at random points while 20 sessions send; PostgreSQL holds the store and the
queue (the production topology). What "stored exactly once" and "delivered at least once" mean per
try is in tests/support/chaos.py. The seed is printed; CHAOS_SEED replays a run, CHAOS_MESSAGES and
CHAOS_SESSIONS make it bigger and CHAOS_SPREAD (seconds the sending is spread over) longer:
`CHAOS_MESSAGES=3000 CHAOS_SPREAD=90 pytest tests/test_chaos.py -s`.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest
import trustme

from app.accounts import set_password
from app.config import load_config
from app.db import session_scope
from app.migrate import upgrade_database
from tests.support.celeryworker import client_for
from tests.support.chaos import (
    Ledger,
    Plan,
    Sink,
    celery_process,
    figures,
    free_port,
    redis_process,
    run_chaos,
    smtp_process,
)
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import EXTRA_ACCOUNTS, client_tls_context, publish_sender_domain
from tests.support.smtppeers import smtp_peer

MESSAGES = int(os.environ.get("CHAOS_MESSAGES", "600"))
SESSIONS = int(os.environ.get("CHAOS_SESSIONS", "20"))


def chaos_config(
    directory: Path, dns: DNSTestServer, tls: tuple[Path, Path], ports: dict[str, int], urls: dict[str, str]
) -> Path:
    """Fixed listener ports (a restarted server listens where the clients expect it), a short lease
    (a killed worker's rows come back within seconds) and short delivery timeouts."""
    listeners = "".join(
        f'[[listeners]]\nkind = "{kind}"\nport = {port}\ntls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n\n'
        for kind, port in ports.items()
        if kind != "sink"
    )
    extra = (
        f"{listeners}[limits]\nmax_sessions_per_ip = 200\nidle_timeout = 60.0\n\n"
        f"[delivery]\nsmtp_port = {ports['sink']}\nlease_seconds = 2\nbatch_size = 50\n"
        "connect_timeout = 2\ncommand_timeout = 5\ntransaction_timeout = 5\n"
        f"{EXTRA_ACCOUNTS}"
    )
    return write_config(directory, extra, dns_port=dns.port, **urls)


@pytest.mark.slow
def test_acknowledged_mail_survives_kills_of_smtp_worker_and_broker(
    tmp_path: Path,
    dns: DNSTestServer,
    postgres_url: str,
    tls_files: tuple[Path, Path],
    tls_ca: trustme.CA,
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", str(random.SystemRandom().randrange(1 << 32))))
    print(f"chaos seed {seed} (CHAOS_SEED={seed} replays the kill schedule)")
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=reject; rua=mailto:dmarc@sender.example")
    dns.add("example.net", "MX", "10 mx.example.net.")
    dns.add("mx.example.net", "A", "127.0.0.1")
    sink = Sink()
    with smtp_peer(None, handler=sink) as peer:
        redis_port = free_port()
        ports = {"inbound": free_port(), "submission": free_port(), "sink": peer.port}
        urls = {"database_url": postgres_url, "broker_url": f"redis://127.0.0.1:{redis_port}/0"}
        config_file = chaos_config(tmp_path / "cfg", dns, tls_files, ports, urls)
        config = load_config(config_file)
        upgrade_database(config.resolved_database_url)
        with session_scope(config.resolved_database_url) as session:
            set_password(session, "bob", "secret password")
        processes = {
            "redis": redis_process(redis_port, tmp_path),
            "smtp": smtp_process(config_file, tmp_path),
            "celery": celery_process(config_file, tmp_path),
        }
        plan = Plan(
            MESSAGES, SESSIONS, seed, ports["inbound"], ports["submission"], client_tls_context(tls_ca),
            spread=float(os.environ.get("CHAOS_SPREAD", "25")),
        )  # fmt: skip
        result = run_chaos(
            plan, processes, config, sink, client_for(config_file), settle_timeout=120, pause=(0.3, 2.0)
        )

    assert result.unsent == [] and result.rejected == {}, "every message must get its 250 in the end"
    assert result.lost == [] and result.broken == [], "acknowledged tries stored, complete; no bounce"
    assert result.duplicates == [], "no try is stored twice"
    assert result.undelivered == [], "every acknowledged submission reaches the sink"
    assert result.delays, "delays were measured"
    # Only the Celery worker may end by itself: with kombu 5.7's Redis transport, a broker lost while
    # the worker holds unacknowledged tasks can end it ("Unrecoverable error: AttributeError: 'NoneType'
    # object has no attribute 'hostname'" in restore_unacked). Its process manager starts it again, as
    # Process.revive does here; the mail is not affected (the database is the truth).
    assert set(result.exits) <= {"celery"}, f"processes ended by themselves: {result.exits}"


def test_the_counts_follow_the_definitions_per_try() -> None:
    """Even numbers went inbound (store), odd ones were submitted (sink); (n, a) is try a of message n."""
    ledger = Ledger()
    ledger.tries.update({0: 2, 1: 1, 2: 1, 3: 2, 4: 1, 5: 1})
    ledger.acked = {0: (2, 10.0), 1: (1, 10.0), 2: (1, 10.0), 3: (2, 10.0), 5: (1, 10.0)}
    stored = Counter({(0, 1): 1, (0, 2): 1, (2, 1): 2})  # 0: an earlier try also stored; 2: twice
    sink = Sink(taken=[((1, 1), 11.0), ((1, 1), 13.0), ((3, 1), 12.0), ((3, 2), 14.0)])
    result = figures(6, ledger, stored, ["messages/x"], sink)
    assert result.unsent == [4]
    assert result.lost == [] and result.duplicates == [(2, 1)] and result.broken == ["messages/x"]
    assert result.unacked_stored == 1  # (0, 1): allowed, its client never saw the 250
    assert result.undelivered == [(5, 1)]
    assert result.redeliveries == 1 and result.unacked_delivered == 1  # (1, 1) twice; (3, 1) unacked
    assert sorted(result.delays) == [1.0, 4.0]  # from each acknowledged try's 250 to its first receipt
    ledger.acked[4] = (1, 10.0)
    assert figures(6, ledger, stored, [], sink).lost == [(4, 1)]
