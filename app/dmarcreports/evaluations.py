"""The DMARC evaluations table: storing evaluations for aggregate reports (SPEC R2.1, R2.2, R2.9),
listing what is pending, and the reads and deletes of the hourly report run (app/dmarcreports/job.py).

The SMTP server hands over an Evaluation per evaluated message (evaluation.py); the task gets it as
JSON and `store_evaluations` reads it back with Evaluation.from_json, which checks it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, delete, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Config
from app.db import affected_rows, session_scope
from app.dmarcreports.evaluation import DKIMAuth, Evaluation, EvaluationError, SPFAuth, normalized_domain
from app.dmarcreports.interval import interval_at, interval_hours
from app.models import DMARCEvaluation

log = logging.getLogger(__name__)

# RFC 9990 2.1.2: a report row carries at most 100 DKIM results, the most useful first.
MAX_DKIM_RESULTS = 100
RECORD_KEY_LENGTH = 16  # hex digits: 64 bits, no collision among the rows of a report

E = DMARCEvaluation
# What makes evaluations one report row: those alike in all of these are counted together.
ROW_COLUMNS = (
    E.source_ip,
    E.disposition,
    E.requested_disposition,
    E.dkim_aligned,
    E.spf_aligned,
    E.override_reasons,
    E.envelope_to,
    E.envelope_from,
    E.header_from,
    E.dkim_results,
    E.spf_results,
)


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


def pending_domains(
    session: Session, domain: str | None = None, limit: int | None = None
) -> list[PendingDomain]:
    """Evaluations waiting for a report, per policy domain (one domain if given; the first `limit`
    domains by name if given)."""
    query = (
        select(
            E.policy_domain,
            func.count(),
            func.sum(case((E.optional, 1), else_=0)),
            func.min(E.evaluated),
            func.max(E.evaluated),
            func.min(E.interval_end),
        )
        .group_by(E.policy_domain)
        .order_by(E.policy_domain)
        .limit(limit)
    )
    if domain is not None:
        query = query.where(E.policy_domain == normalized_domain(domain))
    return [PendingDomain(d, n, int(o or 0), f, la, nx) for d, n, o, f, la, nx in session.execute(query)]


# The hourly report run's reads and deletes (app/dmarcreports/job.py says when and why).


@dataclass(frozen=True)
class Ended:
    """The evaluations a report run takes: ids up to `max_id` (settled_max_id), of intervals ended
    by `run_hour`, evaluated at or after `cutoff` (older ones are purged)."""

    max_id: int
    run_hour: datetime
    cutoff: datetime

    def where(self) -> list[ColumnElement[bool]]:
        return [E.id <= self.max_id, E.interval_end <= self.run_hour, E.evaluated >= self.cutoff]


def settled_max_id(sessions: sessionmaker[Session]) -> int:
    """The highest evaluation id, once every evaluation with a lower id is committed (or rolled back).

    A run reads and deletes "up to this id", so no row below it may still be on its way. On PostgreSQL
    ids come from a sequence when a row is inserted, and commits may come in another order: a row
    given id 7 can commit after the row given id 8, and a run that saw 8 would delete 7 unread. A
    SHARE lock waits for the transactions that are writing the table and holds new writers back while
    the maximum is read (a few milliseconds); their ids are then higher. On SQLite there is one
    writer at a time, and the row of an open write transaction gets its id above every committed one.
    """
    with sessions.begin() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text(f"LOCK TABLE {E.__tablename__} IN SHARE MODE"))
        return session.scalar(select(func.max(E.id))) or 0


@dataclass(frozen=True)
class Span:
    """What a report's header says of a policy domain's ended evaluations."""

    begin: datetime  # the earliest interval start
    end: datetime  # the latest interval end (exclusive)
    required: int  # non-optional evaluations: none means no report (R2.1)


def report_domains(session: Session, ended: Ended) -> dict[str, Span]:
    """Every policy domain with ended evaluations, with its span. Asked here, in a pass of its own
    over the table while the merge sorts, so that the sort carries no more than the rows' columns."""
    required = func.sum(case((E.optional.is_(False), 1), else_=0))
    query = (
        select(E.policy_domain, func.min(E.interval_start), func.max(E.interval_end), required)
        .where(*ended.where())
        .group_by(E.policy_domain)
    )
    return {domain: Span(begin, end, int(n)) for domain, begin, end, n in session.execute(query)}


def report_row_groups(session: Session, ended: Ended) -> Iterator[Sequence[Any]]:
    """The ended evaluations merged into report rows, sorted by policy domain, streamed: per row
    (policy domain, count, *ROW_COLUMNS)."""
    query = (
        select(E.policy_domain, func.count(), *ROW_COLUMNS)
        .where(*ended.where())
        .group_by(E.policy_domain, E.record_key, *ROW_COLUMNS)
        .order_by(E.policy_domain)
        .execution_options(yield_per=2000)
    )
    return iter(session.connection().execute(query))  # plain rows: no ORM result processing


def delete_reported(session: Session, ended: Ended, excluded: Collection[str]) -> int:
    """Delete the ended evaluations but those of the `excluded` policy domains; how many went."""
    done = delete(E).where(*ended.where(), E.policy_domain.not_in(excluded))
    return affected_rows(session.execute(done))


def drop_older_than(session: Session, cutoff: datetime) -> int:
    """Delete the evaluations made before `cutoff`; how many went."""
    return affected_rows(session.execute(delete(E).where(E.evaluated < cutoff)))


def drop_all(session: Session) -> int:
    """Delete every evaluation (reports are turned off); how many went."""
    return affected_rows(session.execute(delete(E)))


def id_before_lowest(session: Session) -> int:
    """One less than the lowest evaluation id (0 for none): where a walk over the ids starts."""
    return (session.scalar(select(func.min(E.id))) or 1) - 1


def delete_id_slice(session: Session, start: int, stop: int, run_hour: datetime, domains: Select[Any]) -> int:
    """Delete the evaluations with ids in (start, stop] of intervals ended by `run_hour` whose policy
    domain `domains` (a query of domain names) selects; how many went."""
    rows = [E.id > start, E.id <= stop, E.interval_end <= run_hour]
    return affected_rows(session.execute(delete(E).where(*rows, E.policy_domain.in_(domains))))
