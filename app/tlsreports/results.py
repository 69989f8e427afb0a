"""The TLS result tables (app/models/tlsrpt.py): the only module that reads or writes them.

Delivery records (`record_tls_results`): each SMTP session (or a failure before one, such as an MTA-STS
policy fetch error) yields one `SessionResult`: it counts once against the recipient domain's policy
(sts / no-policy-found) and, when a host was involved, once against that MX host's policy (tlsa /
no-policy-found). Counts are added with INSERT ... ON CONFLICT DO UPDATE on SQLite and PostgreSQL
alike, so workers recording at the same moment never lose a count. Some values come from outside (the
MX host's EHLO name, MX host names from DNS): each is cut to its column's length here, whoever produced
it: PostgreSQL refuses a longer one (SQLite would keep it).

The daily report job reads and marks (SPEC R5.2): every row belongs to the report for its recipient
domain; a host row (DANE / no policy at an MX host that is not the recipient domain itself) also
belongs to the report for that host. `recipient_report_sent` and `host_report_sent` record that the
row's report went out (or that none will), so no row is ever reported twice.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from sqlalchemy import (
    ColumnElement,
    ColumnExpressionArgument,
    Table,
    and_,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.db import affected_rows, upsert_insert
from app.dbclock import utc_today
from app.models import TLSFailureDetail, TLSResult
from app.tlsreports.report import FailureCount, FailureDetail, PolicyRef, PolicyResult

Role = Literal["recipient", "host"]
KEEP_RESULTS = timedelta(hours=48)


# Recording (delivery).


@dataclass(frozen=True)
class SessionResult:
    """The TLS outcome of one session (or of a host not connected to) for both policies.

    `failure` is the session's outcome (None: TLS succeeded) and counts for both policies, unless a
    policy has its own failure known before connecting (`domain_failure`, `host_failure`: e.g. an
    MTA-STS fetch error, an MX host outside the policy, a TLSA lookup failure), which is then
    recorded for it instead. `connected` False: no session happened, so only such failures count.
    """

    recipient_domain: str
    domain_policy: PolicyRef
    # None when no host was involved (e.g. the failure happened while fetching the MTA-STS policy).
    host_policy: PolicyRef | None
    failure: FailureDetail | None = None
    domain_failure: FailureDetail | None = None
    host_failure: FailureDetail | None = None
    connected: bool = True


def record_tls_results(session: Session, results: Iterable[SessionResult], day: date | None = None) -> None:
    """Add the results to today's (UTC) counts; the caller commits.

    Today is the database's (app/dbclock.py), read as each upsert runs: the daily report job fixes
    the days it reports on the same clock (app/tlsreports/job.py)."""
    today = day if day is not None else utc_today(session)
    for result in results:
        _count(session, today, result, result.domain_policy, result.domain_failure, is_host=False)
        if result.host_policy is not None:
            _count(session, today, result, result.host_policy, result.host_failure, is_host=True)


def _count(
    session: Session,
    day: date | ColumnElement[date],
    result: SessionResult,
    policy: PolicyRef,
    own_failure: FailureDetail | None,
    is_host: bool,
) -> None:
    failure = own_failure or result.failure
    if own_failure is None and not result.connected:
        return
    _add(session, day, result.recipient_domain, policy, failure, is_host)


def _add(
    session: Session,
    day: date | ColumnElement[date],
    recipient_domain: str,
    policy: PolicyRef,
    failure: FailureDetail | None,
    is_host: bool,
) -> None:
    failed = failure is not None
    values = {
        "policy_domain": policy.policy_domain,
        "day": day,
        "recipient_domain": recipient_domain,
        "is_host": is_host,
        "policy_type": policy.policy_type,
        "policy_string": json.dumps(list(policy.policy_string)),
        "mx_host": json.dumps(list(policy.mx_host)),
        "policy_key": _digest(policy.policy_type, *policy.policy_string, "|", *policy.mx_host),
        "success_count": 0 if failed else 1,
        "failure_count": 1 if failed else 0,
    }
    table = TLSResult.__table__
    statement = (
        upsert_insert(session, table)
        .values(_fit(table, values))
        .on_conflict_do_update(
            index_elements=["policy_domain", "day", "recipient_domain", "is_host", "policy_key"],
            set_={
                "success_count": table.c.success_count + values["success_count"],
                "failure_count": table.c.failure_count + values["failure_count"],
            },
        )
        .returning(table.c.id)
    )
    result_id = session.execute(statement).scalar_one()
    if failure is not None:
        _add_failure(session, result_id, failure)


def _add_failure(session: Session, result_id: int, failure: FailureDetail) -> None:
    fields = {
        "result_type": failure.result_type,
        "sending_ip": failure.sending_ip,
        "receiving_mx_hostname": failure.receiving_mx_hostname,
        "receiving_mx_helo": failure.receiving_mx_helo,
        "receiving_ip": failure.receiving_ip,
        "failure_reason_code": failure.failure_reason_code,
        "additional_info": failure.additional_info,
    }
    table = TLSFailureDetail.__table__
    values = {
        "result_id": result_id,
        "detail_key": _digest(*(value or "" for value in fields.values())),
        "failed_session_count": 1,
        **fields,
    }
    statement = (
        upsert_insert(session, table)
        .values(_fit(table, values))
        .on_conflict_do_update(
            index_elements=["result_id", "detail_key"],
            set_={"failed_session_count": table.c.failed_session_count + 1},
        )
    )
    session.execute(statement)


def _fit(table: Table, values: Mapping[str, object]) -> dict[str, object]:
    """`values` with each string cut to its column's length (String(n) columns; Text has none)."""
    fitted = dict(values)
    for name, value in values.items():
        length = getattr(table.c[name].type, "length", None)
        if isinstance(value, str) and length is not None and len(value) > length:
            fitted[name] = value[:length]
    return fitted


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# Reading and marking (the daily report job, `postwarden tlsrpt`).


def _marker(role: Role) -> InstrumentedAttribute[bool]:
    return TLSResult.recipient_report_sent if role == "recipient" else TLSResult.host_report_sent


def _is_host_report_row() -> ColumnElement[bool]:
    return and_(TLSResult.is_host, TLSResult.policy_domain != TLSResult.recipient_domain)


def hold_back_writers(session: Session) -> None:
    """Wait for the transactions writing results to end and hold new ones back until the caller's
    ends (PostgreSQL: a SHARE lock on the table; on SQLite the caller's write lock already does it)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"LOCK TABLE {TLSResult.__tablename__} IN SHARE MODE"))


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


def claim(session: Session, role: Role, ids: Sequence[int]) -> set[int]:
    """Mark the rows sent where no run has yet; the ids this transaction marked.

    One statement for a whole batch of reports: the caller gives back (`unclaim`) the marks of the
    reports it does not send after all, in the same transaction, which commits the marks together
    with whatever it queues for them.
    """
    return set(_set_marker(session, role, ids, True))


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


# Summaries for the admin's web page (app/web/outgoing.py).


@dataclass(frozen=True)
class DayTotal:
    """Sessions counted against one kind of policy on one UTC day: the recipient domain's (`is_host`
    False: sts or no-policy-found) or the MX host's (tlsa or no-policy-found). Every session counts
    once for each kind, so the two are shown apart, not added up."""

    day: date
    is_host: bool
    policy_type: str
    successful: int
    failed: int


@dataclass(frozen=True)
class FailureGroup:
    """Failed sessions of one result type at one MX host (None: no host involved, e.g. an MTA-STS
    fetch error), counted against one kind of policy, since a day."""

    result_type: str
    mx_host: str | None
    is_host: bool
    policy_type: str
    sessions: int
    last_day: date


def daily_totals(session: Session, since: date) -> list[DayTotal]:
    """Successful and failed sessions per day from `since` and kind of policy, newest day first (at
    most 2 x 3 groups a day)."""
    query = (
        select(
            TLSResult.day,
            TLSResult.is_host,
            TLSResult.policy_type,
            func.sum(TLSResult.success_count),
            func.sum(TLSResult.failure_count),
        )
        .where(TLSResult.day >= since)
        .group_by(TLSResult.day, TLSResult.is_host, TLSResult.policy_type)
        .order_by(TLSResult.day.desc(), TLSResult.is_host, TLSResult.policy_type)
    )
    return [
        DayTotal(d, bool(h), t, int(ok or 0), int(bad or 0)) for d, h, t, ok, bad in session.execute(query)
    ]


def failure_groups(session: Session, since: date, limit: int) -> list[FailureGroup]:
    """The failures from `since` by result type, MX host and kind of policy, most sessions first."""
    sessions = func.sum(TLSFailureDetail.failed_session_count)
    query = (
        select(
            TLSFailureDetail.result_type,
            TLSFailureDetail.receiving_mx_hostname,
            TLSResult.is_host,
            TLSResult.policy_type,
            sessions,
            func.max(TLSResult.day),
        )
        .join(TLSResult, TLSResult.id == TLSFailureDetail.result_id)
        .where(TLSResult.day >= since)
        .group_by(
            TLSFailureDetail.result_type,
            TLSFailureDetail.receiving_mx_hostname,
            TLSResult.is_host,
            TLSResult.policy_type,
        )
        .order_by(
            sessions.desc(),
            TLSFailureDetail.result_type,
            TLSFailureDetail.receiving_mx_hostname,
            TLSResult.is_host,
            TLSResult.policy_type,
        )
        .limit(limit)
    )
    return [FailureGroup(r, mx, bool(h), t, int(n or 0), d) for r, mx, h, t, n, d in session.execute(query)]
