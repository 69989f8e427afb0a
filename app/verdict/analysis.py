"""From an authenticated message to where it is stored, what the client is told and what is logged.

The decisions run in order and the first that says something decides (today only DMARC, R1.5; the
reputation analysis R3.4 and rulesets R3.5 join DECISIONS). The verdict then places the copies:
SPEC R3.1/R3.2: a rejected message is still stored in the account's Rejects mailbox, marked seen,
with `mailbox_destined_id` naming the mailbox it would have gone to; the reply stays 550.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from app.address import address_domain
from app.config import Config
from app.store.files import MailboxCopy
from app.verdict.dmarc import dmarc_verdict
from app.verdict.types import ACCEPT, Action, Arrival, Recipient, Verdict

Decision = Callable[[Arrival], Verdict | None]
DECISIONS: tuple[Decision, ...] = (dmarc_verdict,)
RESULTS: dict[Action, str] = {"accept": "accepted", "quarantine": "quarantined"}  # a reject names its own


@dataclass(frozen=True)
class Analysis:
    """Everything the SMTP handler acts on: store `copies` with `headers` prepended, then reply."""

    verdict: Verdict
    copies: tuple[MailboxCopy, ...]
    reply: str  # sent once the copies are stored
    result: str  # the transaction log line's result: accepted, quarantined, rejected-dmarc
    headers: tuple[str, ...]  # whole header lines to prepend, each ending in CRLF

    @property
    def action(self) -> Action:
        return self.verdict.action


def analyze(config: Config, arrival: Arrival) -> Analysis:
    verdict = decide(arrival)
    return Analysis(
        verdict=verdict,
        copies=tuple(mailbox_copies(config, arrival.recipients, verdict, message_columns(arrival))),
        reply=verdict.reply or f"250 2.0.0 Message accepted, id {arrival.transaction_id}",
        result=verdict.result or RESULTS[verdict.action],
        headers=(arrival.outcome.authentication_results,),
    )


def decide(arrival: Arrival) -> Verdict:
    """The first verdict a decision gives; accept when none gives one."""
    for decision in DECISIONS:
        verdict = decision(arrival)
        if verdict is not None:
            return verdict
    return ACCEPT


def mailbox_copies(
    config: Config, recipients: Iterable[Recipient], verdict: Verdict, columns: dict[str, Any]
) -> list[MailboxCopy]:
    """One copy per distinct (account, mailbox) the recipients lead to, placed per the verdict."""
    copies: dict[tuple[str, str], MailboxCopy] = {}
    for rcpt in recipients:
        account = config.accounts[rcpt.account]
        row = {**columns, "rcpt_to": rcpt.address, "reason": verdict.reason}
        if verdict.action == "reject":
            mailbox, destined = account.rejects_mailbox, rcpt.mailbox
            row |= {"seen": True, "is_reject": True}
        elif verdict.action == "quarantine":
            mailbox, destined = account.junk_mailbox, None
        else:
            mailbox, destined = rcpt.mailbox, None
        copies.setdefault((rcpt.account, mailbox), MailboxCopy(rcpt.account, mailbox, row, destined))
    return list(copies.values())


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
