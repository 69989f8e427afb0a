"""Live updates (SPEC R8.3): two clients on one mailbox see each other's flag changes and expunges
in IDLE and NOOP, and a change made through the store's functions (the web UI's and the CLI's path)
reaches an idling client within a second; on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import imapclient
import pytest

from app.accounts import account_id
from app.db import session_scope
from app.store.mailboxes import set_flags
from tests.imap.conftest import IMAPClients, message
from tests.imap.test_imap_server import row_of


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The server's database: the config's SQLite file, or a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def live(database_url: str | None, imap_factory: Callable[..., IMAPClients]) -> IMAPClients:
    return imap_factory()


def idle_until(client: imapclient.IMAPClient, *wanted: Callable[[Any], bool], timeout: float = 5.0) -> float:
    """Seconds until each of `wanted` is satisfied by an IDLE response (asserted to come before the
    timeout); responses read in between are dropped."""
    started = time.monotonic()
    deadline = started + timeout
    waiting = list(wanted)
    while waiting and time.monotonic() < deadline:
        for response in client.idle_check(timeout=max(0.1, deadline - time.monotonic())):
            waiting = [w for w in waiting if not w(response)]
    assert not waiting, "IDLE responses missing at the timeout"
    return time.monotonic() - started


def flags_of(number: int, uid: int, flags: tuple[bytes, ...]) -> Callable[[Any], bool]:
    """Whether a response is the FETCH of message `number` (UID `uid`) with exactly `flags`."""

    def wanted(response: Any) -> bool:
        if response[:2] != (number, b"FETCH"):
            return False
        items = dict(zip(response[2][::2], response[2][1::2], strict=True))
        return set(items[b"FLAGS"]) == set(flags) and items[b"UID"] == uid

    return wanted


def test_two_clients_see_each_others_flag_changes_and_expunges(live: IMAPClients) -> None:
    for n in range(3):
        live.server.deliver(message(n))
    one, two = live.imapclient(), live.imapclient()
    one.select_folder("INBOX")
    two.select_folder("INBOX")
    two.idle()
    one.add_flags([2], [b"\\Flagged"])
    idle_until(two, flags_of(2, 2, (b"\\Flagged",)))
    one.add_flags([1, 3], [b"\\Deleted"])
    one.expunge()
    # Highest number first, so each number is right when sent: 3, then 1.
    idle_until(two, lambda r: r == (3, b"EXPUNGE"), lambda r: r == (1, b"EXPUNGE"))
    two.idle_done()
    assert list(two.fetch([1, 2, 3], ["FLAGS"])) == [2]  # by UID: 1 and 3 are gone
    # NOOP reports the same (the other way round), and a client is not told again of its own STORE.
    assert two.add_flags([2], [b"\\Seen"]) == {2: (b"\\Seen", b"\\Flagged")}
    assert two.noop()[1] == []
    one.remove_flags([2], [b"\\Flagged"])
    assert one.noop()[1] == []
    assert two.noop()[1] == [(1, b"FETCH", (b"FLAGS", (b"\\Seen",), b"UID", 2))]
    one.logout()
    two.logout()


def test_a_flag_change_through_the_store_reaches_an_idling_client_within_a_second(live: IMAPClients) -> None:
    file_id = live.server.deliver(message(1))
    client = live.imapclient()
    client.select_folder("INBOX")
    client.idle()
    with session_scope(live.server.config.resolved_database_url) as session:  # as the web UI does
        set_flags(session, account_id(session, "admin"), [int(str(row_of(live, file_id)["id"]))], seen=True)
    assert idle_until(client, flags_of(1, 1, (b"\\Seen",))) < 1.0
    client.idle_done()
    client.logout()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_a_notification_wakes_the_idling_client_before_any_poll(
    database_url: str, imap_factory: Callable[..., IMAPClients]
) -> None:
    """LISTEN/NOTIFY (app/imap/wakeup.py): with the poll 30 s apart, only the store's notification
    can bring the change within a second; NOOP in between does not stop it."""
    live = imap_factory(idle_poll=30.0)
    file_id = live.server.deliver(message(1))
    client = live.imapclient()
    client.select_folder("INBOX")
    client.idle()
    with session_scope(live.server.config.resolved_database_url) as session:
        set_flags(
            session, account_id(session, "admin"), [int(str(row_of(live, file_id)["id"]))], flagged=True
        )
    assert idle_until(client, flags_of(1, 1, (b"\\Flagged",)), timeout=3.0) < 1.0
    live.server.deliver(message(2))
    assert idle_until(client, lambda r: r == (2, b"EXISTS"), timeout=3.0) < 1.0
    client.idle_done()
    client.logout()
