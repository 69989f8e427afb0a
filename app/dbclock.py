"""The database's clock, for counts whose day must agree between the processes that write and read them.

TLS results are summed per UTC day by delivery workers and reported per day by the daily job, which
may run on other machines: if each used its own clock, a worker a little behind would add to a day
the job has already reported. Both ask the database instead, at the moment a statement runs.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import ColumnElement, Date, cast, func, select
from sqlalchemy.orm import Session


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def utc_today(session: Session) -> ColumnElement[date]:
    """Today's UTC date as an SQL expression, evaluated when the statement using it runs.

    PostgreSQL's clock_timestamp(), not now(): now() is when the transaction began, which may be
    before the statement waited for a lock. SQLite's 'now' is the time of the statement.
    """
    if _dialect(session) == "postgresql":
        return cast(func.timezone("UTC", func.clock_timestamp()), Date)
    return func.date("now")


def database_now(session: Session) -> datetime:
    """The database's current UTC time (aware)."""
    if _dialect(session) == "postgresql":
        moment: datetime = session.execute(select(func.clock_timestamp())).scalar_one()
        return moment.astimezone(UTC)
    text: str = session.execute(select(func.strftime("%Y-%m-%d %H:%M:%f", "now"))).scalar_one()
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
