"""One DMARC evaluation (SPEC R2.1, R2.2): the typed value the SMTP process hands to the task that
stores it, built from the authentication outcome, with its one serialiser.

It crosses the broker as JSON (`to_json`); the task reads it back with `from_json`, which checks
every field again: the broker carries what any process could have written, and what is stored decides
what third parties are sent. evaluations.py stores it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from app.address import address_domain
from app.auth.types import AuthOutcome, Disposition
from app.ipaddr import unmapped
from app.models.base import utcnow

DISPOSITIONS = ("none", "quarantine", "reject")


class EvaluationError(ValueError):
    """The evaluation is malformed; the message names the field."""


@dataclass(frozen=True)
class PolicyPublished:
    """The DMARC record that applied, as the report's policy_published shows it (RFC 9990)."""

    p: str | None  # None: the record has no usable p= (it acts as p=none, RFC 9989 4.10.1)
    sp: str | None = None
    np: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    testing: bool = False
    psd: str = "u"
    ri: int | None = None  # legacy report interval in seconds
    discovery_method: str = "treewalk"
    fo: str | None = None

    @classmethod
    def from_json(cls, policy: dict[str, Any]) -> PolicyPublished:
        """Absent tags take the record's defaults."""
        return cls(
            p=_optional_str(policy, "p"),
            sp=_optional_str(policy, "sp"),
            np=_optional_str(policy, "np"),
            adkim=str(policy.get("adkim") or "r"),
            aspf=str(policy.get("aspf") or "r"),
            testing=bool(policy.get("testing", False)),
            psd=str(policy.get("psd") or "u"),
            ri=_optional_seconds(policy.get("ri")),
            discovery_method=str(policy.get("discovery_method") or "treewalk"),
            fo=_optional_str(policy, "fo"),
        )


@dataclass(frozen=True)
class DKIMAuth:
    domain: str
    selector: str
    result: str


@dataclass(frozen=True)
class SPFAuth:
    domain: str
    scope: str  # "mfrom" or "helo"
    result: str


@dataclass(frozen=True)
class Evaluation:
    """What R2.2 keeps of one evaluated message. `disposition` is what we applied."""

    policy_domain: str
    evaluated: datetime  # with a time zone
    optional: bool  # R2.1: included in a report that goes out anyway, never the cause of one
    rua: tuple[str, ...]
    policy: PolicyPublished
    source_ip: str
    disposition: str  # none, quarantine or reject
    requested_disposition: str | None  # the published policy that applied, for failing mail only
    dkim_aligned: bool
    spf_aligned: bool
    override_reasons: tuple[str, ...]
    envelope_to: str
    envelope_from: str
    header_from: str
    dkim: tuple[DKIMAuth, ...]
    spf: tuple[SPFAuth, ...]

    def to_json(self) -> dict[str, Any]:
        """The task argument: plain JSON types (Celery's json serializer)."""
        return {
            "policy_domain": self.policy_domain,
            "evaluated": self.evaluated.isoformat(),
            "optional": self.optional,
            "rua": list(self.rua),
            "policy": asdict(self.policy),
            "source_ip": self.source_ip,
            "disposition": self.disposition,
            "requested_disposition": self.requested_disposition,
            "dkim_aligned": self.dkim_aligned,
            "spf_aligned": self.spf_aligned,
            "override_reasons": list(self.override_reasons),
            "envelope_to": self.envelope_to,
            "envelope_from": self.envelope_from,
            "header_from": self.header_from,
            "dkim": [asdict(r) for r in self.dkim],
            "spf": [asdict(r) for r in self.spf],
        }

    @classmethod
    def from_json(cls, data: Any) -> Evaluation:
        """The evaluation a task was given, checked and normalised (domains lower-case, an IPv4-mapped
        address as IPv4); EvaluationError names what is wrong with it."""
        try:
            return cls._read(data)
        except EvaluationError:
            raise
        except KeyError as e:
            raise EvaluationError(f"malformed DMARC evaluation: field {e} is missing") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise EvaluationError(f"malformed DMARC evaluation: {e}") from None

    @classmethod
    def _read(cls, data: dict[str, Any]) -> Evaluation:
        policy = PolicyPublished.from_json(data["policy"])
        evaluated = datetime.fromisoformat(data["evaluated"])
        if evaluated.tzinfo is None:
            raise EvaluationError(f"evaluated: {data['evaluated']!r} has no time zone")
        requested = data.get("requested_disposition")
        return cls(
            policy_domain=_required_domain(data, "policy_domain"),
            evaluated=evaluated,
            optional=bool(data.get("optional", False)),
            rua=tuple(str(u) for u in data.get("rua", [])),
            policy=policy,
            source_ip=_source_ip(data["source_ip"]),
            disposition=_choice(data["disposition"], "disposition"),
            requested_disposition=None if requested is None else _choice(requested, "requested_disposition"),
            dkim_aligned=bool(data["dkim_aligned"]),
            spf_aligned=bool(data["spf_aligned"]),
            override_reasons=tuple(str(r) for r in data.get("override_reasons", [])),
            envelope_to=normalized_domain(data.get("envelope_to", "")),
            envelope_from=normalized_domain(data.get("envelope_from", "")),
            header_from=_required_domain(data, "header_from"),
            dkim=tuple(
                DKIMAuth(normalized_domain(r["domain"]), str(r["selector"]), str(r["result"]))
                for r in data.get("dkim", [])
            ),
            spf=tuple(
                SPFAuth(normalized_domain(r["domain"]), str(r["scope"]), str(r["result"]))
                for r in data.get("spf", [])
            ),
        )


def evaluation_applies(outcome: AuthOutcome) -> bool:
    """R2.1: the From domain's DMARC record has a rua address and DMARC was evaluated (pass or fail)."""
    dmarc = outcome.dmarc
    return dmarc.record is not None and bool(dmarc.record.rua) and dmarc.status in ("pass", "fail")


def evaluation_for(
    outcome: AuthOutcome,
    *,
    remote_ip: str,
    mail_from: str,
    recipients: Sequence[str],
    disposition: Disposition,
    optional: bool,
) -> Evaluation:
    """The evaluation of a message that evaluation_applies() to; `disposition` is what we applied."""
    dmarc = outcome.dmarc
    record = dmarc.record
    assert record is not None  # evaluation_applies() holds
    return Evaluation(
        policy_domain=dmarc.policy_domain,
        evaluated=utcnow(),
        optional=optional,
        rua=record.rua,
        policy=PolicyPublished(
            p=record.p,
            sp=record.sp,
            np=record.np,
            adkim=record.adkim,
            aspf=record.aspf,
            testing=record.testing,
            psd=record.psd,
            ri=record.ri,
            discovery_method=dmarc.discovery_method,
            fo=record.fo,
        ),
        source_ip=remote_ip,
        disposition=disposition,
        # The published policy that applied (p, sp or np); DMARC decides it only for failing mail.
        requested_disposition=dmarc.requested_disposition if dmarc.status == "fail" else None,
        dkim_aligned=dmarc.dkim_aligned,
        spf_aligned=dmarc.spf_aligned,
        override_reasons=(),
        envelope_to=address_domain(recipients[0]) if recipients else "",
        # For the null sender SPF checked the HELO name, which the report names then (RFC 7208 2.4).
        envelope_from=address_domain(mail_from) or outcome.spf_mailfrom.domain,
        header_from=outcome.from_domain,
        dkim=tuple(DKIMAuth(r.domain, r.selector, r.status) for r in outcome.dkim),
        spf=tuple(SPFAuth(r.domain, r.scope, r.status) for r in (outcome.spf_mailfrom, outcome.spf_helo)),
    )


def normalized_domain(value: object) -> str:
    if not isinstance(value, str):
        raise EvaluationError(f"{value!r} is not a domain name")
    return value.strip().lower().rstrip(".")


def _required_domain(values: dict[str, Any], key: str) -> str:
    domain = normalized_domain(values[key])
    if not domain:
        raise EvaluationError(f"{key}: a domain name is required")
    return domain


def _choice(value: object, key: str) -> str:
    if value not in DISPOSITIONS:
        raise EvaluationError(f"{key}: {value!r} is not one of {', '.join(DISPOSITIONS)}")
    return str(value)


def _optional_str(values: dict[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is not None and not isinstance(value, str):
        raise EvaluationError(f"{key}: {value!r} is not text")
    return value


def _optional_seconds(value: object) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise EvaluationError(f"ri: {value!r} is not a number of seconds")
    return value


def _source_ip(value: str) -> str:
    return str(unmapped(ipaddress.ip_address(value)))
