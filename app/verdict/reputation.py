"""Reputation analysis (SPEC R3.4): what the user's own junk/notjunk decisions about earlier mail to
the destination mailbox say about this message.

The steps run from the most specific signal to the least, and the first that finds earlier flagged
messages ends the analysis, conclusive or not: (a) the same From address with the same validation
state; (b) an address the user sent mail to; (c) the same From domain, then organisational domain (or
a domain the user sent to); (d) verified DKIM domains and the validated SPF MAIL FROM and EHLO
domains; (e) the sending IP in three network sizes. Each step reads at most a few dozen rows through
indexed range scans (app/store/signals.py), so the cost does not grow with the mailbox. The method
names are the `X-Postwarden-Reason` values of a conclusive verdict (SPEC R3.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from app.address import address_key
from app.queue.outgoing import has_sent_to
from app.store.mailboxes import destination_query, from_addresses
from app.store.signals import (
    Flagged,
    flagged_exists,
    flagged_history,
    flagged_values,
    ip_networks,
    signals_of,
)
from app.verdict.types import Delivery, Verdict

YEAR = timedelta(days=365)
# (window, messages looked at) per step.
FROM_WINDOW, FROM_LIMIT = 3 * YEAR, 2
DOMAIN_WINDOW, DOMAIN_LIMIT = 2 * YEAR, 20
DKIMSPF_WINDOW, DKIMSPF_LIMIT = YEAR / 2, 50
IP_WINDOW, IP_LIMIT = YEAR / 4, 50
WIDEST_WINDOW = max(FROM_WINDOW, DOMAIN_WINDOW, DKIMSPF_WINDOW, IP_WINDOW)
DOMAIN_HAM_PERCENT = 80  # more notjunk than this accepts a domain
DOMAIN_JUNK_LOCALPARTS = 3  # all junk from this many different senders of a domain rejects it
DKIMSPF_HAM_RATIO, DKIMSPF_JUNK_RATIO = 0.1, 0.9  # junk ratios below / above which step (d) concludes
IP_NEEDED = {"ip1": 2, "ip2": 5, "ip3": 10}  # messages a network needs for a conclusive verdict
# The sender retries while the user decides: a rescued message makes the retry welcome (SPEC R3.1).
JUNK_REJECT_REPLY = (
    "451 4.3.0 Message held: it looks like junk to the recipient's filter; it is kept for the "
    "recipient to review, try again later"
)


@dataclass(frozen=True)
class Reputation:
    """What the history says: `junk` True/False, or None when what it found is mixed (or nothing
    was found: method "none"). Only a conclusive answer decides the message."""

    junk: bool | None
    conclusive: bool
    method: str


NO_HISTORY = Reputation(None, False, "none")


@dataclass(frozen=True)
class Subject:
    """The message analysed: its `messages` columns (analysis.message_columns) and where it goes."""

    account_id: int
    mailbox_id: int
    columns: Mapping[str, Any]
    forwarded: bool  # a forward ruleset matched: the forwarder's IP, EHLO and MAIL FROM say nothing
    now: datetime


Step = Callable[[Session, Subject], Reputation | None]


def reputation_verdict(delivery: Delivery) -> Verdict:
    """The last decision: a conclusive history decides; else a valid report to a reporting address
    (app/verdict/reports.py) is accepted ("reporting"); a first message failing SPF is rejected,
    unless DMARC passed (its DKIM signature authenticates the From domain, so the SPF failure is
    another domain's) or it was forwarded (the failure is the forwarder's); else accept."""
    found = delivery.history()
    if found.conclusive and found.junk is not None:
        return junk_reject(found.method) if found.junk else Verdict("accept", found.method)
    arrival = delivery.arrival
    if arrival.report is not None and arrival.report.valid:  # SPEC R6.2
        return Verdict("accept", "reporting")
    outcome = arrival.outcome
    spf_failed = outcome.spf_mailfrom.status in ("fail", "softfail")
    if found == NO_HISTORY and spf_failed and outcome.dmarc.status != "pass" and not delivery.forwarded:
        return junk_reject("spf-fail")
    return Verdict("accept", "no-bad-signals")


def junk_reject(reason: str) -> Verdict:
    return Verdict("reject", reason, reply=JUNK_REJECT_REPLY, result="rejected-junk")


def destination_reputation(
    session: Session, account: str, mailbox: str, columns: Mapping[str, Any], forwarded: bool, now: datetime
) -> Reputation:
    """What the history of the account's mailbox named `mailbox` says of a message with these
    `messages` columns: the first step's answer that found history; NO_HISTORY when none did (or
    before the first message made the mailbox). The mailbox's ids and whether any flagged message
    shares a signal are one statement (with the sent-to lookup of a validated From, all that most
    mail costs)."""
    signals = signals_of(columns, forwarded=forwarded)
    values = {"b_account": account, "b_mailbox": mailbox, **flagged_values(signals, now - WIDEST_WINDOW)}
    row = session.connection().execute(_destination_look(len(signals)), values).first()
    if row is None:
        return NO_HISTORY
    subject = Subject(row[0], row[1], columns, forwarded, now)
    return _steps(session, subject) if row[2] or _sent_to_from(session, subject) else NO_HISTORY


@cache
def _destination_look(signal_count: int) -> Select[Any]:
    """The destination's (account id, mailbox id, flagged history exists), built once per count."""
    query = destination_query()
    mailbox_id = query.selected_columns[1]
    return query.add_columns(flagged_exists(mailbox_id, signal_count))


def _steps(session: Session, subject: Subject) -> Reputation:
    for step in STEPS:
        found = step(session, subject)
        if found is not None:
            return found
    return NO_HISTORY


def _sent_to_from(session: Session, subject: Subject) -> bool:
    """Whether the user wrote to the (validated) From's address, domain or organisational domain.
    Most mail has no flagged history and comes from addresses the user never wrote to, where the
    steps would cost a dozen statements to say so; this and the flagged history in the widest
    window (the steps' signals are the message's stored ones, signals_of) ask once for what the
    steps ask together."""
    columns = subject.columns
    return bool(columns.get("msg_from_validated")) and has_sent_to(
        session,
        subject.account_id,
        address=columns.get("msg_from") or "",
        domain=columns.get("msg_from_domain") or "",
        org_domain=columns.get("msg_from_org_domain") or "",
    )


def from_address(session: Session, subject: Subject) -> Reputation | None:
    """(a) The last one or two messages from the same address with the same validation state: junk
    only if they were all junk; conclusive only for a validated (DMARC pass) From."""
    columns = subject.columns
    if not columns.get("msg_from"):
        return None
    validated = bool(columns.get("msg_from_validated"))
    kind = "from" if validated else "from-unvalidated"
    found = _history(session, subject, [(kind, address_key(columns["msg_from"]))], FROM_WINDOW, FROM_LIMIT)
    if not found:
        return None
    return Reputation(all(m.junk for m in found), validated, "msgfromfull")


def sent_to_address(session: Session, subject: Subject) -> Reputation | None:
    """(b) The user wrote to this (validated) From address: accept."""
    columns = subject.columns
    if columns.get("msg_from_validated") and has_sent_to(
        session, subject.account_id, address=columns.get("msg_from") or ""
    ):
        return Reputation(False, True, "msgtofull")
    return None


def from_domain(session: Session, subject: Subject) -> Reputation | None:
    """(c) The From domain, then the organisational domain: the last 20 messages of two years; or
    the user wrote to that (validated) domain."""
    columns, validated = subject.columns, bool(subject.columns.get("msg_from_validated"))
    domain = (columns.get("msg_from_domain") or "").lower()
    org_domain = (columns.get("msg_from_org_domain") or "").lower()
    levels = [("domain", domain, "msgfromdomain", "msgtodomain")]
    if org_domain != domain:
        levels.append(("orgdomain", org_domain, "msgfromorgdomain", "msgtoorgdomain"))
    for kind, value, method, sent_method in levels:
        if not value:
            continue
        found = _history(session, subject, [(kind, value)], DOMAIN_WINDOW, DOMAIN_LIMIT)
        if found:
            return _domain_reputation(session, found, method)
        sent_to = {"domain": value} if kind == "domain" else {"org_domain": value}
        if validated and has_sent_to(session, subject.account_id, **sent_to):
            return Reputation(False, True, sent_method)
    return None


def _domain_reputation(session: Session, found: list[Flagged], method: str) -> Reputation:
    """More than 80 % notjunk accepts; all junk rejects, but only with mail from at least three
    different senders (one bad address must not condemn a whole domain); mixed says nothing."""
    junk = sum(m.junk for m in found)
    if 100 * (len(found) - junk) > DOMAIN_HAM_PERCENT * len(found):
        return Reputation(False, True, method)
    if junk == len(found):
        senders = from_addresses(session, [m.message_id for m in found])
        localparts = {address_key(a).rpartition("@")[0] for a in senders}
        return Reputation(True, len(localparts) >= DOMAIN_JUNK_LOCALPARTS, method)
    return Reputation(None, False, method)


def dkim_spf(session: Session, subject: Subject) -> Reputation | None:
    """(d) Verified DKIM domains, the validated MAIL FROM and EHLO domains (not a forwarder's): the
    last 50 messages of half a year; a junk ratio below 0.1 accepts, above 0.9 rejects."""
    columns = subject.columns
    signals = [("dkim", d.lower()) for d in (columns.get("dkim_domains") or "").split()]
    if not subject.forwarded:
        if columns.get("spf_mailfrom_validated") and columns.get("mail_from_domain"):
            signals.append(("spf", columns["mail_from_domain"].lower()))
        if columns.get("ehlo_validated") and columns.get("ehlo"):
            signals.append(("ehlo", columns["ehlo"].lower()))
    found = _history(session, subject, signals, DKIMSPF_WINDOW, DKIMSPF_LIMIT)
    if not found:
        return None
    ratio = sum(m.junk for m in found) / len(found)
    if ratio < DKIMSPF_HAM_RATIO:
        return Reputation(False, True, "dkimspf")
    if ratio > DKIMSPF_JUNK_RATIO:
        return Reputation(True, True, "dkimspf")
    return Reputation(None, False, "dkimspf")


def sending_ip(session: Session, subject: Subject) -> Reputation | None:
    """(e) The sending IP as /32, /26, /21 (IPv6 /64, /48, /32), not a forwarder's: the last 50
    messages of a quarter year, the majority decides; conclusive with 2, 5, 10 messages."""
    if subject.forwarded:
        return None
    for kind, network in zip(IP_NEEDED, ip_networks(subject.columns.get("remote_ip") or ""), strict=False):
        found = _history(session, subject, [(kind, network)], IP_WINDOW, IP_LIMIT)
        if found:
            junk = 2 * sum(m.junk for m in found) > len(found)
            return Reputation(junk, len(found) >= IP_NEEDED[kind], kind)
    return None


STEPS: tuple[Step, ...] = (from_address, sent_to_address, from_domain, dkim_spf, sending_ip)


def _history(
    session: Session, subject: Subject, signals: list[tuple[str, str]], window: timedelta, limit: int
) -> list[Flagged]:
    return flagged_history(session, subject.mailbox_id, signals, subject.now - window, limit)
