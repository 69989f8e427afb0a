"""Rulesets (SPEC R3.5): an account's own rules that file matching mail into a mailbox, and the
mailing-list decision. The regexps are the operator's (compiled when the configuration is loaded);
the text they search is the sender's, so each value searched is capped in length."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from email.header import decode_header, make_header

from app.config import Ruleset
from app.verdict.types import Arrival, Delivery, Verdict

MAX_VALUE = 4096  # characters of a header value or MAIL FROM a regexp searches
MAX_FIELDS = 500  # header fields looked at (a message may carry thousands)
REASON = "ruleset"


def matching_ruleset(rulesets: Sequence[Ruleset], arrival: Arrival) -> Ruleset | None:
    """The first ruleset whose MAIL FROM regexp and every header regexp match; None if none does."""
    if not rulesets:  # most accounts have none: no header is decoded for them
        return None
    fields = [(name.lower(), decoded(value)) for name, value in arrival.headers[:MAX_FIELDS]]
    for ruleset in rulesets:
        if matches(ruleset, arrival.mail_from, fields):
            return ruleset
    return None


def matches(ruleset: Ruleset, mail_from: str, fields: Iterable[tuple[str, str]]) -> bool:
    """`fields`: (lower-case name, decoded value). A header regexp matches any field of its name."""
    sender = ruleset.mail_from_pattern
    if sender is not None and not sender.search(mail_from[:MAX_VALUE]):
        return False
    found = list(fields)
    return all(
        any(name == wanted and pattern.search(value) for name, value in found)
        for wanted, pattern in ruleset.header_patterns.items()
    )


def decoded(value: str) -> str:
    """The header value with RFC 2047 encoded words decoded (as it was meant to read), capped."""
    value = value[:MAX_VALUE]
    try:
        return str(make_header(decode_header(value)))[:MAX_VALUE]
    except (ValueError, LookupError, UnicodeError):
        return value


def mailing_list_verdict(delivery: Delivery) -> Verdict | None:
    """Accept mail of the ruleset's mailing list when its domain is verified by SPF (MAIL FROM) or
    DKIM, whatever the author's DMARC policy says (lists rewrite messages and break signatures);
    reputation is then skipped (list mail carries many senders' From addresses)."""
    ruleset = delivery.ruleset
    if ruleset is None or not ruleset.mailing_list_domain:
        return None
    domain, outcome = ruleset.mailing_list_domain.lower(), delivery.arrival.outcome
    spf = outcome.spf_mailfrom.status == "pass" and outcome.spf_mailfrom.domain.lower() == domain
    if spf or domain in (d.lower() for d in outcome.verified_dkim_domains):
        failed = outcome.dmarc.status == "fail" and outcome.dmarc.disposition != "none"
        return Verdict("accept", REASON, dmarc_override="mailing_list" if failed else None)
    return None
