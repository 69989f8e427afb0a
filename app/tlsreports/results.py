"""Stored TLS results (app/models/tlsrpt.py) as the report job reads and marks them.

Roles of a row (SPEC R5.2): every row belongs to the report for its recipient domain; a host row
(DANE / no policy at an MX host that is not the recipient domain itself) also belongs to the report
for that host. `recipient_report_sent` and `host_report_sent` record that the row's report went out
(or that none will), so no row is ever reported twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, ColumnExpressionArgument, and_, delete, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.db import affected_rows
from app.models import TLSFailureDetail, TLSResult
from app.queue.tlsresult import FailureDetail, PolicyRef
from app.tlsreports.report import FailureCount, PolicyResult

Role = Literal["recipient", "host"]
KEEP_RESULTS = timedelta(hours=48)


def _marker(role: Role) -> InstrumentedAttribute[bool]:
    return TLSResult.recipient_report_sent if role == "recipient" else TLSResult.host_report_sent


def _is_host_report_row() -> ColumnElement[bool]:
    return and_(TLSResult.is_host, TLSResult.policy_domain != TLSResult.recipient_domain)


def drop_old_results(session: Session, now: datetime) -> int:
    """Delete results of days that ended more than 48 h ago, sent or not (SPEC R5.2)."""
    first_kept = (now - KEEP_RESULTS).date()
    old = select(TLSResult.id).where(TLSResult.day < first_kept)
    session.execute(delete(TLSFailureDetail).where(TLSFailureDetail.result_id.in_(old)))
    return affected_rows(session.execute(delete(TLSResult).where(TLSResult.day < first_kept)))


def pending_reports(session: Session, role: Role, before: date) -> list[tuple[date, str]]:
    """(day, domain) of reports not yet sent for days before `before`, oldest day first."""
    marker = _marker(role)
    if role == "recipient":
        domain = TLSResult.recipient_domain
        query = select(TLSResult.day, domain).where(~marker)
    else:
        domain = TLSResult.policy_domain
        query = select(TLSResult.day, domain).where(~marker, _is_host_report_row())
    query = query.where(TLSResult.day < before).distinct().order_by(TLSResult.day, domain)
    return [(day, name) for day, name in session.execute(query)]


def _key_column(role: Role) -> InstrumentedAttribute[str]:
    return TLSResult.recipient_domain if role == "recipient" else TLSResult.policy_domain


def report_rows(
    session: Session, role: Role, keys: Sequence[tuple[date, str]]
) -> dict[tuple[date, str], list[TLSResult]]:
    """The unsent rows of each report (a recipient domain's day, or a host's day), in a few queries."""
    found: dict[tuple[date, str], list[TLSResult]] = defaultdict(list)
    wanted = set(keys)
    for where in _of_reports(role, keys, sent=False):
        query = select(TLSResult).where(*where)
        for row in session.scalars(query.order_by(TLSResult.is_host, TLSResult.policy_domain, TLSResult.id)):
            key = (row.day, row.recipient_domain if role == "recipient" else row.policy_domain)
            if key in wanted:
                found[key].append(row)
    return found


def reported_before(session: Session, role: Role, keys: Sequence[tuple[date, str]]) -> set[tuple[date, str]]:
    """The reports among these whose day had rows marked already: their new rows were recorded after
    that day's report (or its decision not to send one), and a report of them needs its own id."""
    found: set[tuple[date, str]] = set()
    for where in _of_reports(role, keys, sent=True):
        query = select(TLSResult.day, _key_column(role)).where(*where).distinct()
        found.update((day, domain) for day, domain in session.execute(query))
    return found & set(keys)


def _of_reports(
    role: Role, keys: Sequence[tuple[date, str]], sent: bool
) -> Iterable[list[ColumnExpressionArgument[bool]]]:
    """Conditions for the rows of these reports, sent or not yet, 500 domains per query."""
    column = _key_column(role)
    marker = _marker(role) if sent else ~_marker(role)
    days = sorted({day for day, _ in keys})
    for start in range(0, len(keys), 500):
        domains = sorted({domain for _, domain in keys[start : start + 500]})
        where: list[ColumnExpressionArgument[bool]] = [marker, TLSResult.day.in_(days), column.in_(domains)]
        yield [*where, _is_host_report_row()] if role == "host" else where


def affected_recipient_domains(session: Session, hosts: Sequence[str]) -> set[str]:
    """The recipient domains in the unsent host results of these MX hosts."""
    found: set[str] = set()
    for start in range(0, len(hosts), 500):
        query = select(TLSResult.recipient_domain).where(
            ~TLSResult.host_report_sent,
            _is_host_report_row(),
            TLSResult.policy_domain.in_(hosts[start : start + 500]),
        )
        found.update(session.scalars(query.distinct()))
    return found


def _set_marker(session: Session, role: Role, ids: Sequence[int], value: bool) -> list[int]:
    """Set the role's marker on the rows where it is not yet `value`; the ids changed.

    Core statements on the table: the ORM's bulk UPDATE would also re-evaluate every loaded row.
    """
    table = TLSResult.__table__
    column = table.c[_marker(role).key]
    changed: list[int] = []
    for start in range(0, len(ids), 500):
        statement = (
            update(table)
            .where(table.c.id.in_(ids[start : start + 500]), column.is_not(value))
            .values({column.key: value})
            .returning(table.c.id)
        )
        changed += session.execute(statement).scalars().all()
    return changed


def claim(session: Session, role: Role, ids: Sequence[int]) -> bool:
    """Mark the rows sent, all or none: False (and nothing marked) if another run marked any first.

    The caller's transaction commits the marks together with whatever it queues for them.
    """
    claimed = _set_marker(session, role, ids, True)
    if len(claimed) == len(ids):
        return True
    unclaim(session, role, claimed)
    return False


def unclaim(session: Session, role: Role, ids: Sequence[int]) -> None:
    """Take back marks of this transaction (a report that could not be queued after all)."""
    _set_marker(session, role, ids, False)


def failures_by_result(session: Session, ids: Iterable[int]) -> dict[int, list[FailureCount]]:
    found: dict[int, list[FailureCount]] = defaultdict(list)
    id_list = list(ids)
    for start in range(0, len(id_list), 500):
        query = select(TLSFailureDetail).where(TLSFailureDetail.result_id.in_(id_list[start : start + 500]))
        for row in session.scalars(query.order_by(TLSFailureDetail.id)):
            detail = FailureDetail(
                row.result_type,
                row.sending_ip,
                row.receiving_mx_hostname,
                row.receiving_mx_helo,
                row.receiving_ip,
                row.failure_reason_code,
                row.additional_info,
            )
            found[row.result_id].append(FailureCount(detail, row.failed_session_count))
    return found


def policy_ref(row: TLSResult) -> PolicyRef:
    return PolicyRef(
        row.policy_type,
        row.policy_domain,
        tuple(json.loads(row.policy_string)),
        tuple(json.loads(row.mx_host)),
    )


def policy_result(row: TLSResult, failures: Sequence[FailureCount]) -> PolicyResult:
    return PolicyResult(policy_ref(row), row.success_count, row.failure_count, tuple(failures))


def results_for(session: Session, domain: str | None, day: date | None) -> list[TLSResult]:
    """Rows for `postwarden tlsrpt results`: a domain's (as policy or recipient domain), newest day first."""
    query = select(TLSResult)
    if domain:
        query = query.where((TLSResult.policy_domain == domain) | (TLSResult.recipient_domain == domain))
    if day:
        query = query.where(TLSResult.day == day)
    order = (TLSResult.day.desc(), TLSResult.recipient_domain, TLSResult.is_host, TLSResult.policy_domain)
    return list(session.scalars(query.order_by(*order)))
