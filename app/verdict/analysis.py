"""From an authenticated message to where it is stored, what the client is told and what is logged.

Each recipient gets its own verdict: rulesets are the account's and reputation is the destination
mailbox's (SPEC R3.4, R3.5). The decisions run in order and the first that says something decides:
a ruleset's verified mailing list, DMARC (R1.5), reputation (which always says something). The verdicts then
place the copies: SPEC R3.1/R3.2: a rejected message is still stored in the account's Rejects
mailbox, marked seen, with `mailbox_destined_id` naming the mailbox it would have gone to; unless a
ruleset accepts rejects into a mailbox of its own, which makes it an accept everywhere (R3.5).
The message is accepted (250) if any recipient accepts it; else the first reject's reply is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app import metrics
from app.address import address_domain
from app.config import Account, Config
from app.logs import fields
from app.models.base import utcnow
from app.store.files import MailboxCopy
from app.verdict.dmarc import dmarc_verdict
from app.verdict.reports import REPORT_FLAGS, ReportCheck, check_report
from app.verdict.reputation import NO_HISTORY, Reputation, destination_reputation, reputation_verdict
from app.verdict.rulesets import mailing_list_verdict, matching_ruleset
from app.verdict.types import ACCEPT, Action, Arrival, Delivery, Recipient, Verdict

log = logging.getLogger(__name__)

Decision = Callable[[Delivery], Verdict | None]
# A verified mailing list comes first: lists rewrite messages and break their authors' DMARC.
DECISIONS: tuple[Decision, ...] = (mailing_list_verdict, dmarc_verdict, reputation_verdict)
RESULTS: dict[Action, str] = {"accept": "accepted", "quarantine": "quarantined"}  # a reject names its own
REASON_HEADER = "X-Postwarden-Reason"


@dataclass(frozen=True)
class Analysis:
    """Everything the SMTP handler acts on: store `copies` with `headers` prepended, then reply."""

    verdict: Verdict  # the one the reply follows
    copies: tuple[MailboxCopy, ...]
    reply: str  # sent once the copies are stored
    result: str  # the transaction log line's result: accepted, quarantined, rejected-dmarc, ...
    headers: tuple[str, ...]  # whole header lines to prepend, each ending in CRLF
    report: ReportCheck | None = None  # mail to a reporting address: a valid report is parsed once stored

    @property
    def action(self) -> Action:
        return self.verdict.action

    @property
    def report_copy(self) -> int | None:
        """The index of the copy that holds a valid report for its reporting address: once stored, its
        report is parsed (app/inreports/intake.py). None for any other message."""
        flagged = (
            i for i, c in enumerate(self.copies) if any(c.columns.get(f) for f in REPORT_FLAGS.values())
        )
        return next(flagged, None)


@dataclass(frozen=True)
class _Placed:
    verdict: Verdict
    copy: MailboxCopy


def analyze(
    config: Config,
    arrival: Arrival,
    session: Session | None = None,
    now: datetime | None = None,
    message: bytes | None = None,
) -> Analysis:
    """The analysis of `arrival`; reputation reads the history through `session` (None: no history,
    for callers without a database). Given the `message`, mail to a reporting address is checked as a
    report (SPEC R6.2) first. Call it off the event loop: it reads the database (and the report)."""
    now = now or utcnow()
    if message is not None:
        arrival = replace(
            arrival, report=check_report(config, arrival.outcome, arrival.recipients, message, now)
        )
    columns = message_columns(arrival)
    history = _history_reader(session, columns, now)
    placed = [_place(config, arrival, r, columns, history) for r in arrival.recipients]
    verdict = next((p.verdict for p in placed if p.verdict.action != "reject"), placed[0].verdict)
    copies: dict[tuple[str, str], MailboxCopy] = {}
    for p in placed:
        copies.setdefault((p.copy.account, p.copy.mailbox), p.copy)
    metrics.verdict(verdict.action, verdict.reason)
    return Analysis(
        verdict=verdict,
        copies=tuple(copies.values()),
        reply=verdict.reply or f"250 2.0.0 Message accepted, id {arrival.transaction_id}",
        result=verdict.result or RESULTS[verdict.action],
        headers=_headers(arrival, verdict),
        report=arrival.report,
    )


def _headers(arrival: Arrival, verdict: Verdict) -> tuple[str, ...]:
    headers = [arrival.outcome.authentication_results]
    if verdict.reason:  # always one of our own tokens, never text from the message
        headers.append(f"{REASON_HEADER}: {verdict.reason}\r\n")
    report = arrival.report
    if report is not None and report.header is not None:  # SPEC R6.3: a fixed reason of ours
        headers.append(report.header)
        problem = fields(message_id=arrival.transaction_id, kind=report.kind, reason=report.error)
        log.info("report not processed", extra=problem)
    return tuple(headers)


def decide(delivery: Delivery) -> Verdict:
    """The first verdict a decision gives; accept when none gives one."""
    for decision in DECISIONS:
        verdict = decision(delivery)
        if verdict is not None:
            return verdict
    return ACCEPT


# (account, destination mailbox, forwarded) -> that mailbox's history of the message
HistoryReader = Callable[[str, str, bool], Reputation]


def _history_reader(session: Session | None, columns: dict[str, Any], now: datetime) -> HistoryReader:
    """Reads a destination's history once per message: recipients of one account and mailbox (aliases)
    share the answer instead of repeating its queries."""
    read: dict[tuple[str, str, bool], Reputation] = {}

    def history(account: str, mailbox: str, forwarded: bool) -> Reputation:
        key = (account, mailbox, forwarded)
        if key not in read:
            read[key] = _read_history(session, account, mailbox, columns, forwarded, now)
        return read[key]

    return history


def _read_history(
    session: Session | None,
    account: str,
    mailbox: str,
    columns: dict[str, Any],
    forwarded: bool,
    now: datetime,
) -> Reputation:
    if session is None:
        return NO_HISTORY
    return destination_reputation(session, account, mailbox, columns, forwarded, now)


def _place(
    config: Config, arrival: Arrival, rcpt: Recipient, columns: dict[str, Any], history: HistoryReader
) -> _Placed:
    """The recipient's verdict and the copy it places."""
    account = config.accounts[rcpt.account]
    ruleset = matching_ruleset(account.rulesets, arrival)
    target = ruleset.mailbox if ruleset is not None else rcpt.mailbox
    forwarded = ruleset is not None and ruleset.is_forward
    verdict = decide(Delivery(arrival, rcpt, ruleset, lambda: history(rcpt.account, target, forwarded)))
    row = {**columns, "rcpt_to": rcpt.address, "reason": verdict.reason}
    if arrival.report is not None and verdict.action != "reject":  # a rejected report is not parsed
        row |= arrival.report.flags(rcpt)
    if verdict.action == "reject" and ruleset is not None and ruleset.accept_rejects_to_mailbox:
        mailbox = ruleset.accept_rejects_to_mailbox
        accepted = fields(
            message_id=arrival.transaction_id, account=rcpt.account, mailbox=mailbox, reason=verdict.reason
        )
        log.info("reject accepted to mailbox", extra=accepted)
        verdict = Verdict("accept", verdict.reason, dmarc_override=_override(arrival, "local_policy"))
        return _Placed(verdict, MailboxCopy(rcpt.account, mailbox, row | _SEEN_REJECT, None, forwarded))
    if forwarded and verdict.action == "accept":  # a quarantine applied what the policy asked
        verdict = replace(verdict, dmarc_override=verdict.dmarc_override or _override(arrival, "forwarded"))
    mailbox, destined = _mailbox_for(account, verdict.action, target)
    if verdict.action == "reject":
        row |= _SEEN_REJECT
    return _Placed(verdict, MailboxCopy(rcpt.account, mailbox, row, destined, forwarded))


_SEEN_REJECT = {"seen": True, "is_reject": True}


def _override(arrival: Arrival, reason: str) -> str | None:
    """`reason` if the message failed a DMARC policy asking for more than "none"; else None."""
    dmarc = arrival.outcome.dmarc
    return reason if dmarc.status == "fail" and dmarc.disposition != "none" else None


def _mailbox_for(account: Account, action: Action, target: str) -> tuple[str, str | None]:
    """(mailbox, the mailbox a reject would have gone to) for the action."""
    if action == "reject":
        return account.rejects_mailbox, target
    if action == "quarantine":
        return account.junk_mailbox, None
    return target, None


def message_columns(arrival: Arrival) -> dict[str, Any]:
    """The `Message` columns that come from the session and the authentication results."""
    outcome, mail_from = arrival.outcome, arrival.mail_from
    passed_dkim = [r for r in outcome.dkim if r.status == "pass"]
    return {
        "remote_ip": arrival.remote_ip,
        "ehlo": arrival.helo[:255],
        "mail_from": mail_from[:512],
        "mail_from_domain": address_domain(mail_from)[:255] or None,
        "msg_from": outcome.from_address[:512] or None,
        "msg_from_domain": outcome.from_domain[:255] or None,
        "msg_from_org_domain": outcome.dmarc.organizational_domain[:255] or None,
        "dkim_domains": " ".join(outcome.verified_dkim_domains) or None,
        "spf_mailfrom_validated": outcome.spf_mailfrom.status == "pass",
        "ehlo_validated": outcome.spf_helo.status == "pass",
        "msg_from_validated": outcome.dmarc.status == "pass",
        "spf_result": outcome.spf_mailfrom.status,
        "dkim_result": "pass" if passed_dkim else (outcome.dkim[0].status if outcome.dkim else "none"),
        "dmarc_result": outcome.dmarc.status,
        "dmarc_disposition": outcome.dmarc.disposition,
    }
