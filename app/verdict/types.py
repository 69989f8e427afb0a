"""What the analysis of an incoming message reads (Arrival, and per recipient Delivery) and what one
decision says (Verdict)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from app.auth.types import AuthOutcome
from app.config import Ruleset

if TYPE_CHECKING:  # reputation.py and reports.py use these types: the names only, no import cycle
    from app.verdict.reports import ReportCheck
    from app.verdict.reputation import Reputation

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
    headers: tuple[tuple[str, str], ...] = ()  # the message's header fields, unfolded (rulesets read them)
    # For mail to a reporting address: whether it is a report we process (SPEC R6.2, verdict/reports.py).
    report: ReportCheck | None = None


@dataclass(frozen=True)
class Delivery:
    """The arrival as one recipient's: the input of every decision. Reputation is per destination
    mailbox (SPEC R3.4), so a decision that needs it calls `history` (read when first asked)."""

    arrival: Arrival
    recipient: Recipient
    ruleset: Ruleset | None  # the first of the account's rulesets that matches (SPEC R3.5)
    history: Callable[[], Reputation]

    @property
    def forwarded(self) -> bool:
        """A forward ruleset matched: the connecting host is a forwarder, not the sender."""
        return self.ruleset is not None and self.ruleset.is_forward


@dataclass(frozen=True)
class Verdict:
    """What one decision says. A reject names its own SMTP reply and log word, so the client and the
    postmaster see what rejected the message; accept and quarantine get the 250 with the message id."""

    action: Action
    reason: str | None = None  # stored as Message.reason, e.g. "dmarc-policy"
    reply: str | None = None  # a reject's reply (sent after the message is stored in Rejects)
    result: str | None = None  # a reject's word in the transaction log line, e.g. "rejected-dmarc"
    # Why a failing DMARC policy was not applied (RFC 9990 PolicyOverride: forwarded, mailing_list,
    # local_policy), for the DMARC evaluation (SPEC R2.2).
    dmarc_override: str | None = None

    def __post_init__(self) -> None:
        if (self.action == "reject") != (self.reply is not None and self.result is not None):
            raise ValueError("a reject, and only a reject, names its reply and log result")


ACCEPT = Verdict("accept")
