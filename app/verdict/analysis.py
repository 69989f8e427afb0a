"""From an authentication outcome to where an incoming message is stored and what the client is told.

SPEC R1.5: DMARC failing with p=reject → 550 5.7.1; p=quarantine → the account's Junk mailbox.
SPEC R3.1/R3.2: a rejected message is still stored in the account's Rejects mailbox, marked seen,
with `mailbox_destined_id` naming the mailbox it would have gone to; the reply stays 550.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.address import address_domain
from app.auth.types import AuthOutcome
from app.config import Config
from app.store.files import MailboxCopy

Action = Literal["accept", "quarantine", "reject"]
DMARC_REJECT_REPLY = "550 5.7.1 Message rejected: the From domain's DMARC policy says reject, and it failed"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str | None  # stored as Message.reason, e.g. "dmarc-policy"


def dmarc_verdict(outcome: AuthOutcome) -> Verdict:
    """What DMARC asks for this message. The outcome's disposition already accounts for testing mode
    (t=y, legacy pct=0: one level milder than published), so it is applied as it is."""
    dmarc = outcome.dmarc
    if dmarc.status != "fail" or dmarc.disposition == "none":
        return Verdict("accept", None)
    return Verdict(dmarc.disposition, "dmarc-policy")


@dataclass(frozen=True)
class Recipient:
    address: str  # as given in RCPT TO, domain lower-cased
    account: str
    mailbox: str  # the mailbox the address delivers to (Inbox, or a special address's mailbox)


def mailbox_copies(
    config: Config, recipients: list[Recipient], verdict: Verdict, columns: dict[str, Any]
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


def message_columns(outcome: AuthOutcome, *, remote_ip: str, helo: str, mail_from: str) -> dict[str, Any]:
    """The `Message` columns that come from the session and the authentication results."""
    passed_dkim = [r for r in outcome.dkim if r.status == "pass"]
    return {
        "remote_ip": remote_ip,
        "ehlo": helo[:255],
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
