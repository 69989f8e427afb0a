"""Reports sent to our reporting addresses (SPEC R6.2, R6.3): is a message one we process as a report?

Mail to a domain's DMARC reporting address is a DMARC report if it passes DMARC; mail to a TLS reporting
address (a domain's, or the host's TLSRPT address) is a TLS report if it has an acceptable DKIM
signature (RFC 8460 3: without l=, by a key allowing service tlsrpt, by the From domain or a parent of
it below the public suffix). Then the report's head must name only our domains and end in the past.
Only the head is read here (app/inreports/read.py `read_head`): the SMTP reply waits for this check,
the whole report is parsed by a task after the message is stored. A refusal gives the message a header
with a fixed reason and the message is delivered as any other; a valid report is accepted by
reputation even when its history says nothing (app/verdict/reputation.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.address import address_key
from app.auth.message import ascii_domain
from app.auth.publicsuffix import is_public_suffix, psl_organizational_domain
from app.auth.types import AuthOutcome, DKIMResult
from app.config import Config, MailboxTarget
from app.inreports.errors import Kind, ReportError, reason_for
from app.inreports.read import read_head
from app.verdict.types import Recipient

log = logging.getLogger(__name__)

HEADERS: dict[Kind, str] = {
    "dmarc": "X-Postwarden-DMARCReport-Error",
    "tls": "X-Postwarden-TLSReport-Error",
}
# The R6.3 reasons decided here; the parsing ones are app/inreports/errors.py's.
NO_DMARC_PASS = "no DMARC pass"
NO_ACCEPTABLE_DKIM = "no acceptable DKIM signature"
UNKNOWN_DOMAIN: dict[Kind, str] = {
    "dmarc": "published policy domain unrecognized",
    "tls": "report for unknown domain",
}
FUTURE_END = "report has end date in the future"
# The message columns marking the reporting address's copy of a valid report, by kind.
REPORT_FLAGS: dict[Kind, str] = {"dmarc": "is_dmarc_report", "tls": "is_tls_report"}
# A reporter whose clock runs a little fast still sends its report just after the range ended.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class ReportCheck:
    """The check of a message to a reporting address (`address`, as address_key): `error` is the R6.3
    reason it is not processed, None for a valid report (parsed and stored after the message is)."""

    kind: Kind
    address: str
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None

    def flags(self, recipient: Recipient) -> dict[str, bool]:
        """The message row columns marking the reporting address's copy of a valid report, which the
        sweep for lost hand-offs looks for (app/inreports/intake.py)."""
        if self.error is not None or address_key(recipient.address) != self.address:
            return {}
        return {REPORT_FLAGS[self.kind]: True}

    @property
    def header(self) -> str | None:
        """The header line a refused report's message gets (the reason is a fixed string of ours)."""
        return None if self.error is None else f"{HEADERS[self.kind]}: {self.error}\r\n"


def reporting_addresses(config: Config) -> dict[str, Kind]:
    """Our addresses receiving reports (as address_key), and which kind each receives."""
    targets: list[tuple[str, MailboxTarget | None, Kind]] = [(config.hostname, config.host_tlsrpt, "tls")]
    for name, domain in config.domains.items():
        targets += [(name, domain.dmarc_reports, "dmarc"), (name, domain.tls_reports, "tls")]
    return {
        address_key(f"{target.localpart}@{domain}"): kind
        for domain, target, kind in targets
        if target is not None
    }


def check_report(
    config: Config, outcome: AuthOutcome, recipients: tuple[Recipient, ...], message: bytes, now: datetime
) -> ReportCheck | None:
    """The check of a message to a reporting address (the first recipient that is one decides the
    kind); None for mail to other addresses."""
    addresses = reporting_addresses(config)
    address = next((k for r in recipients if (k := address_key(r.address)) in addresses), None)
    if address is None:
        return None
    kind = addresses[address]
    return ReportCheck(kind, address, _refusal(config, outcome, kind, message, now))


def _refusal(config: Config, outcome: AuthOutcome, kind: Kind, message: bytes, now: datetime) -> str | None:
    if kind == "dmarc" and outcome.dmarc.status != "pass":
        return NO_DMARC_PASS
    if kind == "tls" and not any(tlsrpt_signature(r, outcome.from_domain) for r in outcome.dkim):
        return NO_ACCEPTABLE_DKIM
    try:
        head = read_head(message, kind)
    except ReportError as error:
        return error.reason
    except Exception:  # a parser bug must not cost the message its delivery: refused, and logged
        log.exception("report check failed")
        return reason_for(kind)
    ours = our_domains(config, kind)
    if not head.domains or not all(domain in ours for domain in head.domains):
        return UNKNOWN_DOMAIN[kind]
    if head.end > now + CLOCK_SKEW:
        return FUTURE_END
    return None


def our_domains(config: Config, kind: Kind) -> set[str]:
    """Policy domains we take reports about: our domains, and for TLS our host name too (the host
    TLSRPT address receives reports about the DANE policy of the MX host)."""
    domains = {ascii_domain(name) for name in config.domains}
    return domains | {config.hostname} if kind == "tls" else domains


def tlsrpt_signature(result: DKIMResult, from_domain: str) -> bool:
    """Whether a DKIM result authenticates a TLS report (RFC 8460 3, SPEC R6.2).

    A key whose s= names only tlsrpt verifies with status "policy" (app/auth/dkim.py: verified, but not
    for email in general), which is what such a key is for here."""
    services = {service.lower() for service in result.key_services}
    return (
        result.status in ("pass", "policy")
        and not result.has_length_limit
        and bool(services & {"*", "tlsrpt"})
        and signed_by_domain_or_parent(result.domain, from_domain)
    )


def signed_by_domain_or_parent(signer: str, from_domain: str) -> bool:
    """`signer` is the From domain or a parent of it, with the same organisational domain by the public
    suffix list, and never a public suffix itself (anyone could sign as one for all its children)."""
    if not signer or not from_domain:
        return False
    if signer != from_domain and not from_domain.endswith(f".{signer}"):
        return False
    same_org = psl_organizational_domain(signer) == psl_organizational_domain(from_domain)
    return same_org and not is_public_suffix(signer)
