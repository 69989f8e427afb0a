"""What the analysis of an incoming message reads (Arrival) and what one decision says (Verdict)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.auth.types import AuthOutcome

Action = Literal["accept", "quarantine", "reject"]


@dataclass(frozen=True)
class Recipient:
    address: str  # as given in RCPT TO, domain lower-cased
    account: str
    mailbox: str  # where mail to the address goes (Inbox, or a special address's mailbox)


@dataclass(frozen=True)
class Arrival:
    """What the SMTP session knows about a message once it is authenticated: the input of every
    decision, so a new one (reputation, rulesets) reads what it needs without a new parameter."""

    outcome: AuthOutcome
    remote_ip: str
    helo: str
    mail_from: str  # "" for the null sender
    recipients: tuple[Recipient, ...]
    transaction_id: str


@dataclass(frozen=True)
class Verdict:
    """What one decision says. A reject names its own SMTP reply and log word, so the client and the
    postmaster see what rejected the message; accept and quarantine get the 250 with the message id."""

    action: Action
    reason: str | None = None  # stored as Message.reason, e.g. "dmarc-policy"
    reply: str | None = None  # a reject's reply (sent after the message is stored in Rejects)
    result: str | None = None  # a reject's word in the transaction log line, e.g. "rejected-dmarc"

    def __post_init__(self) -> None:
        if (self.action == "reject") != (self.reply is not None and self.result is not None):
            raise ValueError("a reject, and only a reject, names its reply and log result")


ACCEPT = Verdict("accept")
