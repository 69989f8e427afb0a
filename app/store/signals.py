"""The identifying signals of stored messages, for reputation analysis (SPEC R3.4): the one module
that reads and changes `message_signals` rows.

Each stored message gets one row per signal (see `MessageSignal`), written with the message's own
rows. The rows copy the message's `mailbox_orig_id`, `received` and junk/notjunk flags, so a
reputation step is one range scan of a partial index that holds only flagged messages; whatever
moves or flags a message calls `resync_signals` in the same transaction.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    Select,
    TextClause,
    bindparam,
    exists,
    false,
    insert,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from app.address import address_key
from app.ipaddr import client_address
from app.models import MessageSignal

# The networks a sending IP is counted in (R3.4 e): /32, /26, /21 for IPv4; /64, /48, /32 for IPv6.
IP_PREFIXES = {4: (32, 26, 21), 6: (64, 48, 32)}
# The signals a forwarder would otherwise be blamed for (R3.5 `is_forward`): they name the forwarder.
FORWARDER_KINDS = frozenset({"ip1", "ip2", "ip3", "ehlo", "spf"})


def ip_networks(ip: str) -> list[str]:
    """The sending IP masked three ways, as network text ("192.0.2.0/26"); [] for no valid IP."""
    return list(_ip_networks(ip))


@lru_cache(maxsize=4096)
def _ip_networks(ip: str) -> tuple[str, ...]:
    """Cached per address: reputation and the store ask for every message, and a sender's mail
    comes from a few addresses (the ipaddress module parses in Python)."""
    address = client_address(ip)
    if address is None:
        return ()
    prefixes = IP_PREFIXES[address.version]
    return tuple(str(ipaddress.ip_network(f"{address}/{bits}", strict=False)) for bits in prefixes)


def signals_of(columns: Mapping[str, Any], *, forwarded: bool = False) -> list[tuple[str, str]]:
    """(kind, value) for each signal of a message with these `messages` columns. A `forwarded`
    message leaves out its forwarder's signals (IP, EHLO, MAIL FROM domain)."""
    found: list[tuple[str, str]] = []
    if columns.get("msg_from"):
        kind = "from" if columns.get("msg_from_validated") else "from-unvalidated"
        found.append((kind, address_key(columns["msg_from"])))
    for kind, key in (("domain", "msg_from_domain"), ("orgdomain", "msg_from_org_domain")):
        if columns.get(key):
            found.append((kind, columns[key].lower()))
    found += [("dkim", domain.lower()) for domain in (columns.get("dkim_domains") or "").split()]
    if columns.get("spf_mailfrom_validated") and columns.get("mail_from_domain"):
        found.append(("spf", columns["mail_from_domain"].lower()))
    if columns.get("ehlo_validated") and columns.get("ehlo"):
        found.append(("ehlo", columns["ehlo"].lower()))
    found += list(zip(("ip1", "ip2", "ip3"), ip_networks(columns.get("remote_ip") or ""), strict=False))
    if forwarded:
        found = [(kind, value) for kind, value in found if kind not in FORWARDER_KINDS]
    return [(kind, value[:512]) for kind, value in dict.fromkeys(found)]


def add_signals(session: Session, messages: Iterable[tuple[int, Mapping[str, Any], bool]]) -> None:
    """Insert the signal rows of newly stored messages: (message row id, its `messages` columns,
    forwarded) each. The columns must hold `mailbox_orig_id` and `received`."""
    rows = [
        {
            "message_id": row_id,
            "mailbox_orig_id": columns["mailbox_orig_id"],
            "kind": kind,
            "value": value,
            "received": columns["received"],
            "junk": bool(columns.get("junk")),
            "notjunk": bool(columns.get("notjunk")),
        }
        for row_id, columns, forwarded in messages
        for kind, value in signals_of(columns, forwarded=forwarded)
    ]
    if rows:  # a Core INSERT on the session's connection: the ORM's bulk insert costs more than SQLite
        session.connection().execute(insert(_TABLE), rows)


def resync_signals(session: Session, changes: Sequence[SignalState]) -> None:
    """Copy messages' new `mailbox_orig_id` and junk/notjunk flags into their signal rows; whatever
    changes those columns of a message calls this in the same transaction."""
    if changes:
        session.execute(_RESYNC, [_params(state) for state in changes])


def copy_signals(session: Session, pairs: Sequence[tuple[int, SignalState]]) -> None:
    """Give copies of messages their originals' signal rows: (source message id, the copy's state)
    each, so a copy counts in reputation as the message it copies would in its place (a COPY then
    EXPUNGE out of Rejects must not lose what the rescue taught)."""
    if pairs:
        rows = [{"b_source_id": source, **_params(state)} for source, state in pairs]
        session.execute(_COPY, rows)


class SignalState(NamedTuple):
    """What a message's signal rows copy from it."""

    message_id: int
    mailbox_orig_id: int | None
    junk: bool
    notjunk: bool


def _params(state: SignalState) -> dict[str, Any]:
    return {f"b_{k}": v for k, v in state._asdict().items()}


_TABLE = MessageSignal.__table__
# The partial index's own WHERE, word for word: SQLite proves a query implies it only by matching terms.
_FLAGGED = text("(junk OR notjunk)")
_RESYNC = (
    update(_TABLE)
    .where(_TABLE.c.message_id == bindparam("b_message_id"))
    .values({column: bindparam(f"b_{column}") for column in ("mailbox_orig_id", "junk", "notjunk")})
)
# One INSERT ... SELECT per copy: the source's (kind, value, received) with the copy's id and state;
# typed parameters, as PostgreSQL cannot infer a parameter's type in a select list.
_COPY = insert(_TABLE).from_select(
    ["message_id", "mailbox_orig_id", "junk", "notjunk", "kind", "value", "received"],
    select(
        bindparam("b_message_id", type_=Integer),
        bindparam("b_mailbox_orig_id", type_=Integer),
        bindparam("b_junk", type_=Boolean),
        bindparam("b_notjunk", type_=Boolean),
        _TABLE.c.kind,
        _TABLE.c.value,
        _TABLE.c.received,
    ).where(_TABLE.c.message_id == bindparam("b_source_id")),
)


# Reading history (SPEC R3.4): what reputation analysis asks.


class Flagged(NamedTuple):
    """An earlier flagged message that shares a signal with the one being analysed."""

    message_id: int
    received: datetime
    junk: bool  # else notjunk: only flagged messages are in the history


def flagged_history(
    session: Session, mailbox_orig_id: int, signals: Sequence[tuple[str, str]], since: datetime, limit: int
) -> list[Flagged]:
    """The newest `limit` distinct flagged messages delivered to the mailbox since `since` that share
    any of the (kind, value) `signals`, newest first. One statement: per signal a range scan of
    `ix_message_signals_history` that stops after `limit` rows, so the cost does not grow with the
    history; the at most len(signals) * limit rows are merged here."""
    if not signals:
        return []
    values = _history_values(mailbox_orig_id, signals, since, limit)
    rows = session.execute(_history_statement(len(signals)), values).all()
    found: dict[int, Flagged] = {}
    for message_id, received, junk in rows:
        found.setdefault(message_id, Flagged(message_id, received, bool(junk)))
    return list(found.values())[:limit]


def history_query(
    mailbox_orig_id: int, signals: Sequence[tuple[str, str]], since: datetime, limit: int
) -> Select[Any]:
    """flagged_history's statement with its values bound (tests check its query plan)."""
    return _history_statement(len(signals)).params(_history_values(mailbox_orig_id, signals, since, limit))


def _history_values(
    mailbox_orig_id: int, signals: Sequence[tuple[str, str]], since: datetime, limit: int
) -> dict[str, Any]:
    return {"mailbox": mailbox_orig_id, "limit": limit, **flagged_values(signals, since)}


def flagged_values(signals: Sequence[tuple[str, str]], since: datetime) -> dict[str, Any]:
    """The values flagged_exists's expression binds: the (kind, value) `signals` and `since`."""
    values: dict[str, Any] = {"since": since}
    for n, (kind, value) in enumerate(signals):
        values |= {f"kind{n}": kind, f"value{n}": value[:512]}
    return values


def flagged_exists(mailbox_orig_id: ColumnElement[int], count: int) -> ColumnElement[bool]:
    """Whether a flagged message delivered to the mailbox since the bound `since` shares any of the
    `count` signals (values from flagged_values), as an expression another owner's statement selects:
    the mailbox row and this answer in one statement (most mail has no history and asks only this).
    One probe of `ix_message_signals_history` per signal, each stopping at the first row."""
    if not count:
        return false()
    return or_(*(exists().where(*_flagged_rows(mailbox_orig_id, n)) for n in range(count)))


@cache
def _history_statement(count: int) -> Select[Any]:
    """The statement for `count` signals, built once: its values are bound at execution, so
    SQLAlchemy compiles it once too (building it anew per call cost more than SQLite's own work)."""
    scans = [_history_scan(n) for n in range(count)]
    merged = scans[0] if count == 1 else union_all(*scans).subquery().select()
    return merged.order_by(text("received DESC"), text("message_id DESC"))


def _history_scan(n: int) -> Select[Any]:
    """The newest flagged rows of the n-th signal; the `junk OR notjunk` term lets the partial index
    serve it (the planner uses a partial index only when the query implies its WHERE)."""
    t = _TABLE.c
    scan = (
        select(t.message_id, t.received, t.junk)
        .where(*_flagged_rows(bindparam("mailbox"), n))
        .order_by(t.received.desc())
        .limit(bindparam("limit", type_=Integer))
    )
    return select(scan.subquery())


def _flagged_rows(
    mailbox_orig_id: ColumnElement[int], n: int
) -> tuple[ColumnElement[bool] | TextClause, ...]:
    """The WHERE of the flagged rows of the n-th signal delivered to the mailbox since `since`."""
    t = _TABLE.c
    return (
        t.mailbox_orig_id == mailbox_orig_id,
        t.kind == bindparam(f"kind{n}"),
        t.value == bindparam(f"value{n}"),
        t.received >= bindparam("since"),
        _FLAGGED,
    )
