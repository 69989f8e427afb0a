"""Storing DMARC evaluations for aggregate reports (SPEC R2.1, R2.2, R2.9), and listing what is pending.

The SMTP server hands over an Evaluation per evaluated message (evaluation.py); the task gets it as
JSON and `store_evaluations` reads it back with Evaluation.from_json, which checks it again.
"""

from __future__ import annotations

import hashlib
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
from app.dmarcreports.evaluation import DKIMAuth, Evaluation, EvaluationError, SPFAuth, normalized_domain
from app.dmarcreports.interval import interval_at, interval_hours
from app.models import DMARCEvaluation

log = logging.getLogger(__name__)

# RFC 9990 2.1.2: a report row carries at most 100 DKIM results, the most useful first.
MAX_DKIM_RESULTS = 100
RECORD_KEY_LENGTH = 16  # hex digits: 64 bits, no collision among the rows of a report


@dataclass(frozen=True)
class PendingDomain:
    """What `postwarden dmarc evaluations` shows for one policy domain."""

    policy_domain: str
    evaluations: int
    optional: int
    first: datetime
    last: datetime
    next_report: datetime  # the end of its earliest interval: the hourly run that reports it


def store_evaluation(config: Config, evaluation: Any) -> bool:
    """Store one evaluation (as the task gets it) if R2.1 says so; whether it was stored."""
    return store_evaluations(config, [evaluation]) == 1


def store_evaluations(config: Config, evaluations: Iterable[Any]) -> int:
    """The task's work: store each evaluation (Evaluation.to_json(), as it came over the broker) that
    R2.1 says is stored, in one transaction, logging each either way; how many were stored. A malformed
    one is logged and skipped, not fatal to the rest."""
    stored = 0
    with session_scope(config.resolved_database_url) as session:
        for evaluation in evaluations:
            try:
                row = record_evaluation(session, config, Evaluation.from_json(evaluation))
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


def record_evaluation(session: Session, config: Config, evaluation: Evaluation) -> DMARCEvaluation | None:
    """Add the evaluation's row if R2.1 says it is stored; None (and a log line) when it is not."""
    if config.no_outgoing_dmarc_reports:
        log.info("dmarc evaluation not stored: no_outgoing_dmarc_reports is set")  # R2.9
        return None
    if not evaluation.rua:
        log.info("dmarc evaluation not stored: %s publishes no rua", evaluation.policy_domain)
        return None
    row = evaluation_row(evaluation)
    session.add(row)
    session.flush()
    return row


def evaluation_row(evaluation: Evaluation) -> DMARCEvaluation:
    """The database row for an evaluation."""
    policy = evaluation.policy
    interval = interval_at(evaluation.evaluated, interval_hours(policy.ri))
    identity = {
        "source_ip": evaluation.source_ip,
        "disposition": evaluation.disposition,
        "requested_disposition": evaluation.requested_disposition,
        "dkim_aligned": evaluation.dkim_aligned,
        "spf_aligned": evaluation.spf_aligned,
        "override_reasons": _json(list(evaluation.override_reasons)),
        "envelope_to": evaluation.envelope_to,
        "envelope_from": evaluation.envelope_from,
        "header_from": evaluation.header_from,
        "dkim_results": _json(_dkim_results(evaluation.dkim, evaluation.header_from)),
        "spf_results": _json(_spf_results(evaluation.spf)),
    }
    return DMARCEvaluation(
        policy_domain=evaluation.policy_domain,
        evaluated=evaluation.evaluated,
        interval_hours=interval.hours,
        interval_start=interval.start,
        interval_end=interval.end,
        optional=evaluation.optional,
        rua=_json(list(evaluation.rua)),
        # RFC 9989 4.10.1: a record without a usable p= but with rua= acts as p=none.
        p=policy.p or "none",
        sp=policy.sp,
        np=policy.np,
        adkim=policy.adkim,
        aspf=policy.aspf,
        testing=policy.testing,
        psd=policy.psd,
        fo=policy.fo,
        discovery_method=policy.discovery_method,
        record_key=record_key(identity),
        **identity,
    )


def record_key(identity: dict[str, Any]) -> str:
    """Evaluations with equal identifying fields merge into one report row (R2.3)."""
    return hashlib.sha256(_json(identity).encode()).hexdigest()[:RECORD_KEY_LENGTH]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# Results are stored as compact JSON lists, [domain, selector, result] and [domain, scope, result]:
# they repeat in every evaluation, and the width of a row is what deleting a million of them costs.


def _dkim_results(results: Iterable[DKIMAuth], header_from: str) -> list[list[str]]:
    """DKIM results in RFC 9990 2.1.2 order: aligned passes (strict, relaxed), other passes, the rest."""
    cleaned = [[r.domain, r.selector, r.result] for r in results]

    def rank(result: list[str]) -> int:
        domain, _, status = result
        if status != "pass":
            return 3
        if domain == header_from:
            return 0
        related = header_from.endswith("." + domain) or domain.endswith("." + header_from)
        return 1 if related else 2

    return sorted(cleaned, key=rank)[:MAX_DKIM_RESULTS]


def _spf_results(results: Iterable[SPFAuth]) -> list[list[str]]:
    """The MAIL FROM result only: RFC 9990 reports one SPF result, scope mfrom, so a HELO result kept
    here would only split rows that the report shows as equal."""
    kept = [r for r in results if r.domain and r.scope == "mfrom"]
    return [[r.domain, "mfrom", r.result] for r in kept[:1]]


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
        query = query.where(e.policy_domain == normalized_domain(domain))
    return [PendingDomain(d, n, int(o or 0), f, la, nx) for d, n, o, f, la, nx in session.execute(query)]
