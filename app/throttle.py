"""Password checks for SMTP AUTH and the web login, with failed logins throttled.

Failures are counted per account name and per client address range (IPv4 /24 and IPv6 /64 by
default) in the database, so the forked SMTP workers and the web process share the counts. After a
few failures each further one is answered after a growing delay; at a limit, logins for that account
or from that range are refused without checking the password until a quiet window has passed. A
successful login clears its account's count. Counts of a key are forgotten a window after its last
failure (rows deleted then), so the table stays small.

Unknown account names are counted like known ones and cost one scrypt like them: neither the time
taken nor the throttling tells which accounts exist. Attempts running at the same moment may each
pass the check before any failure is counted, so a limit can be overshot by the number of concurrent
attempts (each still costs a full password check).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from app.accounts import check_password, stored_password_hash
from app.config import LoginThrottle
from app.db import session_scope, upsert_insert
from app.ipaddr import client_address
from app.models import LoginFailure
from app.models.base import utcnow

ACCOUNT, NETWORK = "account", "network"
MAX_KEY_LENGTH = 320  # LoginFailure.key: a login longer than any address is cut (it still counts)


@dataclass(frozen=True)
class LoginResult:
    account: str | None  # the account logged in; None when refused or failed
    retry_after: int | None = None  # refused (too many failures): seconds until logins are taken again
    failures: int = 0  # failures counted now for the account name or the address range, the larger
    delay: float = 0.0  # seconds to wait before answering this failure


def attempt_login(
    database_url: str,
    settings: LoginThrottle,
    account: str | None,
    login: str,
    password: str,
    ip: str,
) -> LoginResult:
    """One login: `account` is the configured account `login` names (None if it names none). Blocking
    (scrypt and database): run it in a worker thread."""
    keys = [(ACCOUNT, account_key(account, login)), (NETWORK, address_range(ip, settings))]
    with session_scope(database_url) as session:
        retry_after = refusal(session, settings, keys, utcnow())
        stored = None if retry_after else stored_password_hash(session, account)
    if retry_after:
        return LoginResult(None, retry_after=retry_after)
    # Exactly one scrypt, outside any transaction (it takes ~0.1 s).
    if check_password(password, stored) and account is not None:
        with session_scope(database_url) as session:
            forget(session, keys[0])
        return LoginResult(account)
    with session_scope(database_url) as session:
        failures = record_failure(session, settings, keys, utcnow())
    return LoginResult(None, failures=failures, delay=failure_delay(settings, failures))


def account_key(account: str | None, login: str) -> str:
    """What an account's failures are counted under: the account a login names (its name and its
    addresses count together), else the login as given, case-folded and cut to the column's size."""
    return account if account is not None else login.strip().casefold()[:MAX_KEY_LENGTH]


def address_range(ip: str, settings: LoginThrottle) -> str:
    """The client's address range, e.g. "192.0.2.0/24"; a peer that is not an IP address (a Unix
    socket) is counted under its own name."""
    address = client_address(ip)
    if address is None:
        return ip[:MAX_KEY_LENGTH]
    prefix = settings.ipv4_prefix if address.version == 4 else settings.ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def refusal(
    session: Session, settings: LoginThrottle, keys: list[tuple[str, str]], now: datetime
) -> int | None:
    """Seconds until logins are taken again if the account or the range is at its limit, else None."""
    limits = {ACCOUNT: settings.account_limit, NETWORK: settings.network_limit}
    rows = session.execute(
        select(LoginFailure.scope, LoginFailure.failures, LoginFailure.last_failure).where(
            tuple_(LoginFailure.scope, LoginFailure.key).in_(keys),
            LoginFailure.last_failure > now - _window(settings),
        )
    )
    ends = [last + _window(settings) for scope, failures, last in rows if failures >= limits[scope]]
    if not ends:
        return None
    return max(1, math.ceil((max(ends) - now).total_seconds()))


def record_failure(
    session: Session, settings: LoginThrottle, keys: list[tuple[str, str]], now: datetime
) -> int:
    """Count a failure under each key; returns the larger count. Counts quiet for a window are deleted
    first (so such a key starts again from one), which also bounds the table."""
    session.execute(delete(LoginFailure).where(LoginFailure.last_failure <= now - _window(settings)))
    table = LoginFailure.__table__
    counts = []
    for scope, key in keys:
        insert = upsert_insert(session, table).values(scope=scope, key=key, failures=1, last_failure=now)
        statement = insert.on_conflict_do_update(
            index_elements=["scope", "key"],
            set_={"failures": table.c.failures + 1, "last_failure": now},
        ).returning(table.c.failures)
        counts.append(session.execute(statement).scalar_one())
    return max(counts)


def forget(session: Session, key: tuple[str, str]) -> None:
    scope, name = key
    session.execute(delete(LoginFailure).where(LoginFailure.scope == scope, LoginFailure.key == name))


def failure_delay(settings: LoginThrottle, failures: int) -> float:
    """No delay for the first `delay_after` failures, then first_delay, doubling, up to max_delay."""
    beyond = failures - settings.delay_after
    if beyond <= 0:
        return 0.0
    return min(settings.max_delay, settings.first_delay * 2 ** min(beyond - 1, 32))


def _window(settings: LoginThrottle) -> timedelta:
    return timedelta(seconds=settings.window)
