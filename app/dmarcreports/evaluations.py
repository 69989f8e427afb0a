"""Storing DMARC evaluations for aggregate reports (SPEC R2.1, R2.2, R2.9), and listing what is pending.

The SMTP server hands over a JSON-able dict per evaluated message (app/smtpserver/evaluation.py); it
is checked here again, because what is stored decides what third parties are sent.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.config import Config
from app.db import session_scope
from app.dmarcreports.interval import interval_at, interval_hours
from app.models import DMARCEvaluation

log = logging.getLogger(__name__)

DISPOSITIONS = ("none", "quarantine", "reject")
# RFC 9990 2.1.2: a report row carries at most 100 DKIM results, the most useful first.
MAX_DKIM_RESULTS = 100
RECORD_KEY_LENGTH = 16  # hex digits: 64 bits, no collision among the rows of a report


class EvaluationError(ValueError):
    """The evaluation dict is malformed; the message names the field."""


@dataclass(frozen=True)
class PendingDomain:
    """What `postwarden dmarc evaluations` shows for one policy domain."""

    policy_domain: str
    evaluations: int
    optional: int
    first: datetime
    last: datetime
    next_report: datetime  # the end of its earliest interval: the hourly run that reports it


def store_evaluation(config: Config, evaluation: dict[str, Any]) -> bool:
    """Store one evaluation if R2.1 says so; whether it was stored."""
    return store_evaluations(config, [evaluation]) == 1


def store_evaluations(config: Config, evaluations: Iterable[dict[str, Any]]) -> int:
    """The task's work: store each evaluation that R2.1 says is stored, in one transaction, logging
    each either way; how many were stored. A malformed one is logged and skipped, not fatal to the rest."""
    stored = 0
    with session_scope(config.resolved_database_url) as session:
        for evaluation in evaluations:
            try:
                row = record_evaluation(session, config, evaluation)
            except EvaluationError as e:
                log.warning("dmarc evaluation not stored: %s", e)
                continue
            if row is not None:
                stored += 1
                log.info(
                    "dmarc evaluation stored policy_domain=%s disposition=%s optional=%s interval_end=%s",
                    row.policy_domain,
                    row.disposition,
                    row.optional,
                    f"{row.interval_end:%Y-%m-%d %H:%M}",
                )
    return stored


def record_evaluation(session: Session, config: Config, evaluation: dict[str, Any]) -> DMARCEvaluation | None:
    """Add the evaluation's row if R2.1 says it is stored; None (and a log line) when it is not."""
    if config.no_outgoing_dmarc_reports:
        log.info("dmarc evaluation not stored: no_outgoing_dmarc_reports is set")  # R2.9
        return None
    row = evaluation_row(evaluation)
    if not json.loads(row.rua):
        log.info("dmarc evaluation not stored: %s publishes no rua", row.policy_domain)
        return None
    session.add(row)
    session.flush()
    return row


def evaluation_row(evaluation: dict[str, Any]) -> DMARCEvaluation:
    """The database row for an evaluation dict; EvaluationError names what is wrong with it."""
    try:
        return _row(evaluation)
    except EvaluationError:
        raise
    except KeyError as e:
        raise EvaluationError(f"malformed DMARC evaluation: field {e} is missing") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise EvaluationError(f"malformed DMARC evaluation: {e}") from None


def _row(evaluation: dict[str, Any]) -> DMARCEvaluation:
    policy = evaluation["policy"]
    evaluated = datetime.fromisoformat(evaluation["evaluated"])
    if evaluated.tzinfo is None:
        raise EvaluationError(f"evaluated: {evaluation['evaluated']!r} has no time zone")
    interval = interval_at(evaluated, interval_hours(policy.get("ri")))
    disposition = _choice(evaluation, "disposition", DISPOSITIONS)
    identity = {
        "source_ip": _source_ip(evaluation["source_ip"]),
        "disposition": disposition,
        "requested_disposition": evaluation.get("requested_disposition"),
        "dkim_aligned": bool(evaluation["dkim_aligned"]),
        "spf_aligned": bool(evaluation["spf_aligned"]),
        "override_reasons": _json([str(r) for r in evaluation.get("override_reasons", [])]),
        "envelope_to": _domain(evaluation.get("envelope_to", "")),
        "envelope_from": _domain(evaluation.get("envelope_from", "")),
        "header_from": _required_domain(evaluation, "header_from"),
        "dkim_results": _json(_dkim_results(evaluation.get("dkim", []), _domain(evaluation["header_from"]))),
        "spf_results": _json(_spf_results(evaluation.get("spf", []))),
    }
    return DMARCEvaluation(
        policy_domain=_required_domain(evaluation, "policy_domain"),
        evaluated=evaluated,
        interval_hours=interval.hours,
        interval_start=interval.start,
        interval_end=interval.end,
        optional=bool(evaluation.get("optional", False)),
        rua=_json([str(u) for u in evaluation.get("rua", [])]),
        # RFC 9989 4.10.1: a record without a usable p= but with rua= acts as p=none.
        p=policy.get("p") or "none",
        sp=policy.get("sp"),
        np=policy.get("np"),
        adkim=policy.get("adkim") or "r",
        aspf=policy.get("aspf") or "r",
        testing=bool(policy.get("testing", False)),
        psd=policy.get("psd") or "u",
        fo=policy.get("fo"),
        discovery_method=policy.get("discovery_method") or "treewalk",
        record_key=record_key(identity),
        **identity,
    )


def record_key(identity: dict[str, Any]) -> str:
    """Evaluations with equal identifying fields merge into one report row (R2.3)."""
    return hashlib.sha256(_json(identity).encode()).hexdigest()[:RECORD_KEY_LENGTH]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _choice(values: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = values[key]
    if value not in allowed:
        raise EvaluationError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _domain(value: object) -> str:
    if not isinstance(value, str):
        raise EvaluationError(f"{value!r} is not a domain name")
    return value.strip().lower().rstrip(".")


def _required_domain(values: dict[str, Any], key: str) -> str:
    domain = _domain(values[key])
    if not domain:
        raise EvaluationError(f"{key}: a domain name is required")
    return domain


def _source_ip(value: str) -> str:
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


# Results are stored as compact JSON lists, [domain, selector, result] and [domain, scope, result]:
# they repeat in every evaluation, and the width of a row is what deleting a million of them costs.


def _dkim_results(results: list[dict[str, Any]], header_from: str) -> list[list[str]]:
    """DKIM results in RFC 9990 2.1.2 order: aligned passes (strict, relaxed), other passes, the rest."""
    cleaned = [[_domain(r["domain"]), str(r["selector"]), str(r["result"])] for r in results]

    def rank(result: list[str]) -> int:
        domain, _, status = result
        if status != "pass":
            return 3
        if domain == header_from:
            return 0
        related = header_from.endswith("." + domain) or domain.endswith("." + header_from)
        return 1 if related else 2

    return sorted(cleaned, key=rank)[:MAX_DKIM_RESULTS]


def _spf_results(results: list[dict[str, Any]]) -> list[list[str]]:
    """The MAIL FROM result only: RFC 9990 reports one SPF result, scope mfrom, so a HELO result kept
    here would only split rows that the report shows as equal."""
    kept = [r for r in results if r.get("domain") and r.get("scope") == "mfrom"]
    return [[_domain(r["domain"]), "mfrom", str(r["result"])] for r in kept[:1]]


def pending_domains(session: Session, domain: str | None = None) -> list[PendingDomain]:
    """Evaluations waiting for a report, per policy domain (one domain if given)."""
    e = DMARCEvaluation
    query = (
        select(
            e.policy_domain,
            func.count(),
            func.sum(case((e.optional, 1), else_=0)),
            func.min(e.evaluated),
            func.max(e.evaluated),
            func.min(e.interval_end),
        )
        .group_by(e.policy_domain)
        .order_by(e.policy_domain)
    )
    if domain is not None:
        query = query.where(e.policy_domain == _domain(domain))
    return [PendingDomain(d, n, int(o or 0), f, la, nx) for d, n, o, f, la, nx in session.execute(query)]
