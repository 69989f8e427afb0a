"""The DMARC decision (SPEC R1.5): p=reject → 550 5.7.1 (stored in Rejects, R3.1); p=quarantine → Junk.
A forward ruleset (R3.5) skips the reject: a forwarder breaks SPF alignment of honest mail."""

from __future__ import annotations

from app.verdict.types import Delivery, Verdict

DMARC_REJECT_REPLY = "550 5.7.1 Message rejected: the From domain's DMARC policy says reject, and it failed"
REASON = "dmarc-policy"


def dmarc_verdict(delivery: Delivery) -> Verdict | None:
    """What DMARC asks for this message; None when it asks for nothing. The outcome's disposition
    already accounts for testing mode (t=y, legacy pct=0: one level milder than published), so it is
    applied as it is."""
    dmarc = delivery.arrival.outcome.dmarc
    if dmarc.status != "fail" or dmarc.disposition == "none":
        return None
    if dmarc.disposition == "reject" and delivery.forwarded:
        return None
    if dmarc.disposition == "quarantine":
        return Verdict("quarantine", REASON)
    return Verdict("reject", REASON, reply=DMARC_REJECT_REPLY, result="rejected-dmarc")
