"""The DMARC evaluation an incoming message leaves for aggregate reports (SPEC R2.1, R2.2).

The SMTP server only builds the record (a JSON-able dict) and hands it to a callable; the composition
root (`postwarden smtp`) sends it to the `tasks.mail.record_dmarc_evaluation` task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.address import address_domain
from app.auth.types import AuthOutcome
from app.config import Config
from app.models.base import utcnow

RecordEvaluation = Callable[[dict[str, Any]], None]


def evaluation_applies(outcome: AuthOutcome) -> bool:
    """R2.1: the From domain's DMARC record has a rua address and DMARC was evaluated (pass or fail)."""
    dmarc = outcome.dmarc
    return dmarc.record is not None and bool(dmarc.record.rua) and dmarc.status in ("pass", "fail")


def reporting_addresses(config: Config) -> set[str]:
    """Our addresses that receive DMARC and TLS reports (mail to them gets *optional* evaluations)."""
    targets = [(config.hostname, config.host_tlsrpt)]
    for name, domain in config.domains.items():
        targets += [(name, domain.dmarc_reports), (name, domain.tls_reports)]
    return {f"{target.localpart}@{domain}" for domain, target in targets if target is not None}


def dmarc_evaluation(
    outcome: AuthOutcome,
    *,
    remote_ip: str,
    mail_from: str,
    recipients: list[str],
    disposition: str,
    optional: bool,
) -> dict[str, Any]:
    """The evaluation record for R2.2, as plain JSON types. `disposition` is what we applied."""
    dmarc = outcome.dmarc
    record = dmarc.record
    assert record is not None  # evaluation_applies() holds
    return {
        "policy_domain": dmarc.policy_domain,
        "evaluated": utcnow().isoformat(),
        "optional": optional,
        "rua": list(record.rua),
        "policy": {
            "p": record.p,
            "sp": record.sp,
            "np": record.np,
            "adkim": record.adkim,
            "aspf": record.aspf,
            "testing": record.testing,
            "psd": record.psd,
            "ri": record.ri,
            "discovery_method": dmarc.discovery_method,
            "fo": record.fo,
        },
        "source_ip": remote_ip,
        "disposition": disposition,
        # The published policy that applied (p, sp or np); DMARC decides it only for failing mail.
        "requested_disposition": dmarc.requested_disposition if dmarc.status == "fail" else None,
        "dkim_aligned": dmarc.dkim_aligned,
        "spf_aligned": dmarc.spf_aligned,
        "override_reasons": [],
        "envelope_to": address_domain(recipients[0]) if recipients else "",
        # For the null sender SPF checked the HELO name, which the report names then (RFC 7208 2.4).
        "envelope_from": address_domain(mail_from) or outcome.spf_mailfrom.domain,
        "header_from": outcome.from_domain,
        "dkim": [{"domain": r.domain, "selector": r.selector, "result": r.status} for r in outcome.dkim],
        "spf": [
            {"domain": r.domain, "scope": r.scope, "result": r.status}
            for r in (outcome.spf_mailfrom, outcome.spf_helo)
        ],
    }
