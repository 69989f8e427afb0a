"""Recording TLS results of delivery sessions for TLS reporting (SPEC R4.6, RFC 8460 §4).

Each SMTP session (or a failure before one, such as an MTA-STS policy fetch error) yields one
`SessionResult`: it counts once against the recipient domain's policy (sts / no-policy-found) and,
when a host was involved, once against that MX host's policy (tlsa / no-policy-found). Counts are
added with INSERT ... ON CONFLICT DO UPDATE on SQLite and PostgreSQL alike, so workers recording at
the same moment never lose a count.

Some values come from outside: the MX host's EHLO name, MX host names from DNS. Each value is cut to
its column's length here, whoever produced it: PostgreSQL refuses a longer one (SQLite would keep it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from sqlalchemy import ColumnElement, Table
from sqlalchemy.orm import Session

from app.db import upsert_insert
from app.dbclock import utc_today
from app.models import TLSFailureDetail, TLSResult
from app.models.tlsrpt import PolicyType


@dataclass(frozen=True)
class PolicyRef:
    """A policy as a report names it (RFC 8460 §4.4 "policy")."""

    policy_type: PolicyType
    policy_domain: str
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()

    @staticmethod
    def none_found(domain: str) -> PolicyRef:
        return PolicyRef("no-policy-found", domain)


@dataclass(frozen=True)
class FailureDetail:
    """RFC 8460 §4.4 "failure-details" of one failed session."""

    result_type: str
    sending_ip: str | None = None
    receiving_mx_hostname: str | None = None
    receiving_mx_helo: str | None = None
    receiving_ip: str | None = None
    failure_reason_code: str | None = None
    additional_info: str | None = None


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
