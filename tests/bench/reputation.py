"""Reputation analysis (SPEC R3.4) at scale: one account whose mailboxes hold 1,000,000 messages
received over 3 years from 50,000 senders, against the same account with 10,000 messages.
`--smoke` runs it on tiny data in seconds (tests/test_bench_smoke.py does, in `make test`).

The data: senders in domains (some sending from a subdomain of their organisational domain), about
two in five through one of the bulk-mail providers (their DKIM signature, bounce domain, EHLO and IP
range), the rest from their own servers (IPv4, one domain in ten IPv6); a quarter of the domains send
junk, mostly unvalidated, from a few shared networks. Sender frequency is skewed (a few newsletters
send thousands, most senders a handful). As users do, few messages are flagged: some junk is moved
to Junk (junk), some good mail marked notjunk, some rejects rescued from Rejects; about 6 % in all.
Some mail goes to a Lists mailbox, so the history is per mailbox. Rows are written with the store's
own builders (new_message_row, add_messages, add_signals, record_sent_recipient) in a child process.
The small database has the same model with senders scaled to the messages (20 messages a sender).

Measured: the reputation step alone, `destination_reputation()` (app/verdict/reputation.py) for the Inbox,
each call timed on a live session of the SQLite file database, after a warm-up pass; no SMTP, DNS
or the rest of analyze(). The two databases take turns analysis by analysis (both see the same
load on the machine). The 10,000 analyses mix senders: known good and known junk addresses,
a new localpart of a known domain, a new subdomain of a known organisational domain, a new domain
signed by a known provider, a new domain in a known IP range, an address the user wrote to, and
nothing known at all (every step runs and finds nothing); one in twenty is forwarded.

Printed: p50/p99 per database and per kind of sender. The last line is
`reputation: p99 1M X ms, 10k Y ms, ratio R (target p99 < 5 ms, ratio < 1.5)`.
Targets: p99 < 5 ms on both, and p99 with 1M / p99 with 10k < 1.5: the cost does not grow with
the mailbox. Not a pytest test:
`.venv/bin/python tests/bench/reputation.py [messages] [senders] [analyses] [small messages]`.
"""

from __future__ import annotations

import ipaddress
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `app` and `tests` importable

from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from app.accounts import ensure_account  # noqa: E402
from app.db import session_scope  # noqa: E402
from app.migrate import upgrade_database  # noqa: E402
from app.queue.outgoing import record_sent_recipient  # noqa: E402
from app.store.mailboxes import add_messages, destination_ids, ensure_mailbox, new_message_row  # noqa: E402
from app.store.signals import add_signals  # noqa: E402
from app.verdict.reputation import NO_HISTORY, Reputation, Subject, destination_reputation  # noqa: E402
from tests.bench.args import count  # noqa: E402

MESSAGES = count(1, smoke=3_000, full=1_000_000)
SENDERS = count(2, smoke=100, full=50_000)
ANALYSES = count(3, smoke=300, full=10_000)
SMALL = count(4, smoke=500, full=10_000)
WARMUP = ANALYSES // 10
START = datetime(2023, 12, 1, tzinfo=UTC)
NOW = START + timedelta(days=3 * 365, hours=1)
BATCH = 10_000
ACCOUNT = "bench"
TARGET_P99_MS = 5.0
TARGET_RATIO = 1.5
SEED = 11
# Generating only: the data need not survive a crash, and a cache larger than SQLite's default 2 MB
# keeps the indexes' pages from spilling to the WAL again and again within a batch.
FAST_WRITES = ("PRAGMA synchronous = OFF", "PRAGMA cache_size = -262144")
LOCALPARTS = ("news", "info", "alice", "bob", "noreply", "billing", "team", "Carol", "support", "hello")
# The kinds of analysed senders and how often each comes (out of 100).
MIX = {
    "known address": 30,
    "known junk address": 10,
    "same domain, new localpart": 10,
    "new subdomain of org domain": 5,
    "new domain, known provider": 10,
    "new domain, same IP range": 10,
    "address the user wrote to": 5,
    "nothing known": 20,
}


@dataclass(frozen=True)
class Sender:
    """How one sender's messages look to us: the `messages` columns analysis would give them."""

    address: str
    domain: str
    org_domain: str
    junk: float  # how likely the user flags one of its messages junk
    validated: bool  # DMARC passes
    dkim_domains: str | None
    mail_from_domain: str
    spf_ok: bool
    ehlo: str
    ehlo_ok: bool
    network: str  # the range its IPs come from (a /26 or a provider's /21; IPv6 a /56)

    def columns(self, rng: random.Random) -> dict[str, Any]:
        net = ipaddress.ip_network(self.network)
        ip = str(net[rng.randrange(min(net.num_addresses, 1 << 16))])
        return {
            "remote_ip": ip,
            "ehlo": self.ehlo,
            "mail_from": f"bounce-{rng.randrange(10**6)}@{self.mail_from_domain}",
            "mail_from_domain": self.mail_from_domain,
            "msg_from": self.address,
            "msg_from_domain": self.domain,
            "msg_from_org_domain": self.org_domain,
            "dkim_domains": self.dkim_domains,
            "spf_mailfrom_validated": self.spf_ok,
            "ehlo_validated": self.ehlo_ok,
            "msg_from_validated": self.validated,
            "spf_result": "pass" if self.spf_ok else "softfail",
            "dkim_result": "pass" if self.dkim_domains else "none",
            "dmarc_result": "pass" if self.validated else "fail",
            "dmarc_disposition": "none",
        }


@dataclass(frozen=True)
class Population:
    """The senders of an account's mail, their domains and the networks mail comes from."""

    senders: list[Sender]
    weights: list[float]  # cumulative: how often each sender sends (skewed)
    providers: int
    domains: int


def provider_network(k: int) -> str:
    return str(ipaddress.ip_network((0x0B000000 + k * 2048, 21)))  # 11.0.0.0/21, 11.0.8.0/21...


def junk_network(k: int) -> str:
    return str(ipaddress.ip_network((0x0D000000 + k * 2048, 21)))


def own_network(j: int) -> str:
    """A self-hosted domain's network: one domain in ten on IPv6."""
    if j % 10 == 9:
        return f"2001:db8:{j >> 8:x}:{(j & 0xFF) << 8:x}::/56"
    return str(ipaddress.ip_network((0x0C000000 + j * 64, 26)))


def make_sender(rng: random.Random, n: int, j: int, providers: int, junk_domain: bool) -> Sender:
    """Sender number n of domain j (a junk domain or not), its mail shaped by chance."""
    org = f"d{j}.example"
    domain = f"news.{org}" if j % 5 == 0 else org
    address = f"{LOCALPARTS[n % len(LOCALPARTS)]}{n}@{domain}"
    same = {"address": address, "domain": domain, "org_domain": org}
    if junk_domain:
        signed, k = rng.random() < 0.3, rng.randrange(8)
        return Sender(
            **same,
            junk=0.9,
            validated=rng.random() < 0.2,
            dkim_domains=domain if signed else None,
            mail_from_domain=domain,
            spf_ok=rng.random() < 0.4,
            ehlo=f"host{n}.junk{k}.example",
            ehlo_ok=False,
            network=junk_network(k),
        )
    k = rng.randrange(providers)
    if rng.random() < 0.4:  # through a provider
        return Sender(
            **same,
            junk=0.02,
            validated=rng.random() < 0.9,
            dkim_domains=f"{domain} esp{k}.example",
            mail_from_domain=f"bounce.esp{k}.example",
            spf_ok=True,
            ehlo=f"mta{n % 50}.esp{k}.example",
            ehlo_ok=rng.random() < 0.5,
            network=provider_network(k),
        )
    return Sender(
        **same,
        junk=0.05 if rng.random() < 0.9 else 0.5,  # one in ten sends mail the user half dislikes
        validated=rng.random() < 0.9,
        dkim_domains=domain,
        mail_from_domain=domain,
        spf_ok=rng.random() < 0.95,
        ehlo=f"mail.{domain}",
        ehlo_ok=rng.random() < 0.5,
        network=own_network(j),
    )


def population(senders: int) -> Population:
    """The same senders in the generating child and in the analysing parent (one seed)."""
    rng = random.Random(SEED)
    domains = max(senders // 4, 2)
    providers = max(senders // 250, 4)
    junk_domains = {j for j in range(domains) if rng.random() < 0.25}
    people = [
        make_sender(rng, n, j, providers, j in junk_domains)
        for n, j in enumerate(rng.randrange(domains) for _ in range(senders))
    ]
    cumulative, total = [], 0.0
    for rank in range(senders):
        total += 1 / (rank + 1) ** 0.8
        cumulative.append(total)
    return Population(people, cumulative, providers, domains)


def friends(people: Population) -> list[str]:
    """Addresses the user wrote to that never wrote to the account, in the senders' domains."""
    return [f"friend{n}@d{n % people.domains}.example" for n in range(max(len(people.senders) // 25, 2))]


def generate(url: str, messages: int, senders: int) -> None:
    """The account, its mailboxes, messages with their signal rows, sent recipients (a child
    process): messages in arrival order over 3 years, a few flagged as users flag mail."""
    upgrade_database(url)
    people = population(senders)
    rng = random.Random(SEED + messages)
    with session_scope(url) as session:
        account = ensure_account(session, ACCOUNT).id
        boxes = {
            name: ensure_mailbox(session, account, name) for name in ("Inbox", "Junk", "Rejects", "Lists")
        }
        for sender in rng.sample(people.senders, max(len(people.senders) // 25, 2)):
            if sender.junk < 0.5:
                record_sent_recipient(session, account, sender.address)
        for address in friends(people):  # people the user wrote to who never wrote to the account
            record_sent_recipient(session, account, address)
    step = (NOW - timedelta(hours=1) - START) / messages
    chosen = rng.choices(people.senders, cum_weights=people.weights, k=messages)
    for first in range(0, messages, BATCH):
        rows = [
            stored_row(rng, n, chosen[n], account, boxes, START + n * step)
            for n in range(first, min(first + BATCH, messages))
        ]
        with session_scope(url) as session:
            for pragma in FAST_WRITES:
                session.execute(text(pragma))
            ids = add_messages(session, rows)
            add_signals(session, [(row_id, row, False) for row_id, row in zip(ids, rows, strict=True)])


def stored_row(
    rng: random.Random, n: int, sender: Sender, account: int, boxes: dict[str, int], received: datetime
) -> dict[str, Any]:
    """Message n's row where it ended up: most unflagged in Inbox (some in Lists); flagged junk moved
    to Junk; some junk rejected into Rejects, a few of those rescued (notjunk)."""
    columns = sender.columns(rng) | {
        "rcpt_to": f"{ACCOUNT}@example.org",
        "message_id": f"<{n}.{rng.randrange(10**9)}@{sender.domain}>",
        "subject": f"Message {n}",
    }
    is_junk = rng.random() < sender.junk
    flag = rng.random() < (0.15 if is_junk else 0.03)
    box, destined = "Lists" if sender.address.startswith("news") else "Inbox", None
    if is_junk and not sender.validated and rng.random() < 0.2:
        box, destined = "Rejects", box
    row = new_message_row(
        columns,
        account_id=account,
        mailbox_id=boxes[box],
        destined_mailbox_id=None if destined is None else boxes[destined],
        path=f"messages/{received:%Y%m%d}/b{n}",
        size=2000 + rng.randrange(60_000),
    ) | {"received": received, "seen": box == "Rejects" or rng.random() < 0.9, "is_reject": box == "Rejects"}
    if flag and box == "Rejects":  # rescued: the move makes it the delivery it would have been
        rescued = boxes[destined or "Inbox"]
        return row | {"mailbox_id": rescued, "mailbox_orig_id": rescued, "is_reject": False, "notjunk": True}
    if flag:
        return row | ({"mailbox_id": boxes["Junk"], "junk": True} if is_junk else {"notjunk": True})
    return row


def subjects(
    people: Population, ids: tuple[int, int], analyses: int, seed: int
) -> Iterator[tuple[str, Subject]]:
    """(kind, subject) of each analysis: the mix of MIX, one in twenty forwarded."""
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=analyses)
    for n, kind in enumerate(kinds):
        columns = subject_columns(rng, people, kind, n)
        yield kind, Subject(*ids, columns, rng.random() < 0.05, NOW)


def subject_columns(rng: random.Random, people: Population, kind: str, n: int) -> dict[str, Any]:
    """The columns of a message of this kind of sender."""
    known = rng.choices(people.senders, cum_weights=people.weights)[0]
    fresh = make_sender(rng, 10**7 + n, 10**6 + n, people.providers, False)
    if kind == "known junk address":
        known = rng.choice([s for s in people.senders[:500] if s.junk > 0.5] or people.senders)
    if kind in ("known address", "known junk address"):
        return known.columns(rng)
    if kind == "same domain, new localpart":
        return replace(known, address=f"new{n}@{known.domain}").columns(rng)
    if kind == "new subdomain of org domain":
        domain = f"sub{n}.{known.org_domain}"
        return replace(known, address=f"new{n}@{domain}", domain=domain).columns(rng)
    if kind == "new domain, known provider":
        k = rng.randrange(people.providers)
        return replace(
            fresh,
            dkim_domains=f"{fresh.domain} esp{k}.example",
            mail_from_domain=f"bounce.esp{k}.example",
            spf_ok=True,
            ehlo=f"mta1.esp{k}.example",
            network=provider_network(k),
        ).columns(rng)
    if kind == "new domain, same IP range":
        return replace(
            fresh, validated=False, dkim_domains=None, spf_ok=False, network=known.network
        ).columns(rng)
    if kind == "address the user wrote to":
        address = rng.choice(friends(people))
        domain = address.partition("@")[2]
        return replace(fresh, address=address, domain=domain, org_domain=domain, validated=True).columns(rng)
    return replace(fresh, network=f"2001:db8:ffff:{n:x}::/64" if n % 2 else "198.18.0.0/21").columns(rng)


@dataclass
class Database:
    """A generated database, the senders its analyses come from, and what measuring it found:
    milliseconds per analysis by kind of sender, and the methods that answered."""

    label: str
    url: str
    people: Population
    by_kind: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    methods: Counter[str] = field(default_factory=Counter)

    @property
    def times(self) -> list[float]:
        return [t for times in self.by_kind.values() for t in times]


def measure(databases: list[Database]) -> None:
    """Time `reputation()` per analysis, each database on its own live session, after a warm-up pass
    of other subjects. The databases take turns, analysis by analysis, so that both see the same
    load on the machine and their ratio is about them."""
    with ExitStack() as stack:
        sessions = [stack.enter_context(session_scope(db.url)) for db in databases]
        streams = []
        for db, session in zip(databases, sessions, strict=True):
            ids = destination_ids(session, ACCOUNT, "Inbox")  # as analysis finds them
            assert ids is not None
            for _kind, subject in subjects(db.people, ids, WARMUP, SEED + 1):
                reputation(session, subject)
            streams.append(subjects(db.people, ids, ANALYSES, SEED + 2))
        for turn in zip(*streams, strict=True):
            for db, session, (kind, subject) in zip(databases, sessions, turn, strict=True):
                started = time.perf_counter()
                found = reputation(session, subject)
                db.by_kind[kind].append((time.perf_counter() - started) * 1000)
                db.methods[answer(found)] += 1


def reputation(session: Session, subject: Subject) -> Reputation:
    """The reputation of the subject's message for the Inbox, as analysis reads it (its ids included)."""
    return destination_reputation(session, ACCOUNT, "Inbox", subject.columns, subject.forwarded, subject.now)


def answer(found: Reputation) -> str:
    """The method and what it said: "msgfromdomain junk", "dkimspf notjunk", "ip3 mixed", "none"."""
    if found == NO_HISTORY:
        return found.method
    said = "mixed" if found.junk is None else "junk" if found.junk else "notjunk"
    return f"{found.method} {said}{'' if found.conclusive else '?'}"


def percentiles(times: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms."""
    if len(times) < 2:
        return (times[0], times[0]) if times else (0.0, 0.0)
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return cuts[49], cuts[98]


def size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def generated(directory: Path, messages: int) -> Database:
    """A database of `messages` (senders scaled to it), generated by a child process."""
    senders = max(SENDERS * messages // MESSAGES, 20)
    url = f"sqlite:///{directory / f'reputation-{messages}.db'}"
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--generate", url, str(messages), str(senders)], check=True)
    with session_scope(url) as session:
        flagged = session.execute(text("SELECT count(*) FROM messages WHERE junk OR notjunk")).scalar_one()
        signals = session.execute(text("SELECT count(*) FROM message_signals")).scalar_one()
    print(
        f"{size(messages)}: generated {messages:,} messages ({flagged:,} flagged), {signals:,} signal rows, "
        f"{senders:,} senders: {time.perf_counter() - started:.0f} s"
    )
    return Database(size(messages), url, population(senders))


def report(db: Database) -> float:
    """Print what measuring the database found; its p99."""
    print(f"{db.label}:")
    for kind, times in sorted(db.by_kind.items()):
        p50, p99 = percentiles(times)
        print(f"  {kind:30} {len(times):6,}  p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    answers = ", ".join(f"{method} {n}" for method, n in db.methods.most_common())
    print(f"  answered by (? inconclusive): {answers}")
    p50, p99 = percentiles(db.times)
    print(f"{db.label}: {len(db.times):,} analyses, reputation() p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return p99


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="reputation-bench-") as tmp:
        databases = [generated(Path(tmp), MESSAGES), generated(Path(tmp), SMALL)]
        print(
            f"measured: each reputation(session, subject) call alone (the reputation step: its queries "
            f"through a live session of the SQLite file), after {WARMUP:,} warm-up calls, the two "
            f"databases taking turns"
        )
        measure(databases)
        large, small = (report(db) for db in databases)
    ratio = large / small
    met = large < TARGET_P99_MS and small < TARGET_P99_MS and ratio < TARGET_RATIO
    print(f"targets (p99 < {TARGET_P99_MS:g} ms, ratio < {TARGET_RATIO}): {'met' if met else 'MISSED'}")
    print(
        f"reputation: p99 {size(MESSAGES)} {large:.2f} ms, {size(SMALL)} {small:.2f} ms, ratio {ratio:.2f} "
        f"(target p99 < {TARGET_P99_MS:g} ms, ratio < {TARGET_RATIO})"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
