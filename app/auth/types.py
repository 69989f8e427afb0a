"""Results of message authentication: SPF, DKIM, DMARC, and the outcome the SMTP server acts on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SPFStatus = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
DKIMStatus = Literal["pass", "fail", "neutral", "none", "temperror", "permerror", "policy"]
DMARCStatus = Literal["pass", "fail", "none", "temperror", "permerror"]
Disposition = Literal["none", "quarantine", "reject"]


@dataclass(frozen=True)
class SPFResult:
    status: SPFStatus
    domain: str  # the domain checked: MAIL FROM's domain, or the HELO name
    scope: Literal["mfrom", "helo"]
    explanation: str = ""
    reason: str = ""  # why this result (matched term, limit exceeded, DNS error), for logs and headers


@dataclass(frozen=True)
class DKIMResult:
    status: DKIMStatus
    domain: str  # d=
    selector: str  # s=
    algorithm: str = ""
    reason: str = ""
    has_length_limit: bool = False  # l= present
    key_services: tuple[str, ...] = ("*",)  # s= of the key record (RFC 6376 3.6.1)


@dataclass(frozen=True)
class DMARCRecord:
    """A parsed `v=DMARC1` record (RFC 9989; RFC 7489 tags parsed too)."""

    p: Disposition | None
    sp: Disposition | None = None
    np: Disposition | None = None
    adkim: Literal["r", "s"] = "r"
    aspf: Literal["r", "s"] = "r"
    testing: bool = False  # t=y, or legacy pct=0
    psd: Literal["y", "n", "u"] = "u"
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    ri: int | None = None  # legacy report interval in seconds
    pct: int | None = None  # legacy
    raw: str = ""
    # Tags present with a value we could not use (ignored, RFC 9989 4.7); an invalid p/sp/np matters
    # for policy discovery (RFC 9989 4.10.1).
    invalid_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class DMARCResult:
    status: DMARCStatus
    from_domain: str
    policy_domain: str = ""  # where the record applying to from_domain was found
    organizational_domain: str = ""
    record: DMARCRecord | None = None
    discovery_method: Literal["treewalk", "psl"] = "treewalk"
    dkim_aligned: bool = False
    spf_aligned: bool = False
    # The disposition to apply on "fail" (before local policy overrides): with t=y (or legacy pct=0)
    # it is one level below the published policy (RFC 9989 4.7, tag t), so a caller may act on it
    # as it is. `requested_disposition` is the published policy (p, sp or np) that applied.
    disposition: Disposition = "none"
    reason: str = ""
    requested_disposition: Disposition = "none"
    testing: bool = False


@dataclass(frozen=True)
class AuthOutcome:
    """Everything the SMTP server needs from authentication, plus the header to prepend."""

    spf_mailfrom: SPFResult
    spf_helo: SPFResult
    dkim: list[DKIMResult]
    dmarc: DMARCResult
    from_address: str  # RFC5322.From address ("" if absent or ambiguous)
    from_domain: str
    authentication_results: str  # the full header line "Authentication-Results: ...\r\n"
    verified_dkim_domains: list[str] = field(default_factory=list)
