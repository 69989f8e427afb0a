"""Reputation analysis (SPEC R3.4) on histories built directly in a real SQLite store: every step, in
order, with its window, message count and ratio boundaries; and that each lookup is an index scan.
One test of each step, and the index scan, also run on PostgreSQL."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Select, event, insert, select, text
from sqlalchemy.orm import Session

from app.accounts import ensure_account
from app.db import session_scope
from app.migrate import upgrade_database
from app.models import MessageSignal
from app.queue.outgoing import record_sent_recipient
from app.store.mailboxes import add_messages, ensure_mailbox, new_message_row
from app.store.signals import add_signals, flagged_values, history_query, signals_of
from app.verdict.reputation import (
    DKIMSPF_WINDOW,
    DOMAIN_WINDOW,
    FROM_WINDOW,
    IP_WINDOW,
    NO_HISTORY,
    Reputation,
    _destination_look,
    destination_reputation,
)

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
DAY = timedelta(days=1)
# The message analysed: validated From, a DKIM signature, SPF-validated MAIL FROM, a validated EHLO.
MESSAGE = {
    "msg_from": "Alice@Sender.example",
    "msg_from_validated": True,
    "msg_from_domain": "sender.example",
    "msg_from_org_domain": "sender.example",
    "dkim_domains": "dkim.example",
    "spf_mailfrom_validated": True,
    "mail_from_domain": "bounce.example",
    "ehlo_validated": True,
    "ehlo": "mx.relay.example",
    "remote_ip": "192.0.2.10",
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reputation") / "template.db"
    upgrade_database(f"sqlite:///{path}")
    return path


class History:
    """An account's Inbox with flagged messages added at chosen ages."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.account_id = ensure_account(session, "alice").id
        self.inbox = ensure_mailbox(session, self.account_id, "Inbox")
        self.other = ensure_mailbox(session, self.account_id, "Other")
        self._n = 0

    def add(self, junk: bool, age: timedelta = DAY, *, mailbox: int | None = None, **columns: Any) -> None:
        """A message with these columns (nothing from MESSAGE unless given), flagged junk or notjunk."""
        self._n += 1
        box = self.inbox if mailbox is None else mailbox
        row = new_message_row(
            columns | {"junk": junk, "notjunk": not junk},
            account_id=self.account_id,
            mailbox_id=box,
            destined_mailbox_id=None,
            path=f"messages/20261201/h{self._n}",
            size=1,
        ) | {"received": NOW - age}
        (row_id,) = add_messages(self.session, [row])
        add_signals(self.session, [(row_id, row, False)])

    def many(self, count: int, junk: bool, age: timedelta = DAY, **columns: Any) -> None:
        for n in range(count):
            self.add(junk, age + n * timedelta(minutes=1), **columns)

    def judge(self, *, forwarded: bool = False, **changes: Any) -> Reputation:
        self.session.flush()
        return destination_reputation(self.session, "alice", "Inbox", MESSAGE | changes, forwarded, NOW)


@pytest.fixture
def history(template: Path, tmp_path: Path) -> Iterator[History]:
    shutil.copy(template, tmp_path / "db.sqlite")
    with session_scope(f"sqlite:///{tmp_path / 'db.sqlite'}") as session:
        yield History(session)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_history(request: pytest.FixtureRequest) -> Iterator[History]:
    """History on SQLite, then on a migrated PostgreSQL database: for one test of each step, so every
    reputation query (and the partial index it relies on) runs on both."""
    if request.param == "sqlite":
        yield request.getfixturevalue("history")
        return
    url: str = request.getfixturevalue("postgres_url")
    upgrade_database(url)
    with session_scope(url) as session:
        yield History(session)


def said(found: Reputation) -> tuple[bool | None, bool, str]:
    return found.junk, found.conclusive, found.method


FROM = {"msg_from": "alice@sender.example", "msg_from_validated": True}


def test_a_mailbox_not_made_yet_has_no_history(history: History) -> None:
    history.add(True, **MESSAGE)
    found = destination_reputation(history.session, "alice", "Lists", MESSAGE, False, NOW)
    assert found == NO_HISTORY
    assert destination_reputation(history.session, "bob", "Inbox", MESSAGE, False, NOW) == NO_HISTORY


def test_no_history_is_none(any_history: History) -> None:
    any_history.add(True, msg_from="alice@sender.example", msg_from_validated=True, mailbox=any_history.other)
    assert any_history.judge() == NO_HISTORY, "another mailbox's history does not count"


# (a) The same From address.


def test_the_last_message_from_the_address_decides(history: History) -> None:
    history.add(True, **FROM)
    assert said(history.judge()) == (True, True, "msgfromfull")


def test_junk_only_if_the_last_two_were_junk(history: History) -> None:
    history.add(True, DAY, **FROM)
    history.add(False, 2 * DAY, **FROM)
    assert said(history.judge()) == (False, True, "msgfromfull")


def test_only_the_last_two_count(any_history: History) -> None:
    any_history.many(2, True, DAY, **FROM)
    any_history.many(5, False, 3 * DAY, **FROM)
    assert said(any_history.judge()) == (True, True, "msgfromfull")


def test_an_unvalidated_from_is_inconclusive_and_has_its_own_history(history: History) -> None:
    history.add(False, **FROM)  # validated history does not vouch for a forged From
    history.add(True, msg_from="alice@sender.example", msg_from_validated=False)
    assert said(history.judge(msg_from_validated=False)) == (True, False, "msgfromfull")


@pytest.mark.parametrize(("age", "found"), [(FROM_WINDOW - DAY, True), (FROM_WINDOW + DAY, False)])
def test_from_window_is_three_years(history: History, age: timedelta, found: bool) -> None:
    history.add(True, age, **FROM)
    assert (history.judge().method == "msgfromfull") is found


# (b) An address the user sent mail to.


def test_sent_to_the_address_accepts_a_validated_from(any_history: History) -> None:
    record_sent_recipient(any_history.session, any_history.account_id, "Alice@sender.example")
    assert said(any_history.judge()) == (False, True, "msgtofull")
    assert any_history.judge(msg_from_validated=False) == NO_HISTORY, "a forged From gains nothing"


def test_the_from_address_history_comes_before_sent_to(history: History) -> None:
    record_sent_recipient(history.session, history.account_id, "Alice@sender.example")
    history.add(True, **FROM)
    assert said(history.judge()) == (True, True, "msgfromfull")


# (c) The From domain, then the organisational domain.


def domain_mail(localpart: str = "bob", domain: str = "sender.example") -> dict[str, Any]:
    return {"msg_from": f"{localpart}@{domain}", "msg_from_domain": domain, "msg_from_org_domain": domain}


@pytest.mark.parametrize(
    ("ham", "junk", "expected"),
    [(5, 1, (False, True)), (4, 1, (None, False)), (20, 0, (False, True))],  # >80 % notjunk: 5/6 yes, 4/5 no
)
def test_domain_accepts_above_80_percent_notjunk(
    history: History, ham: int, junk: int, expected: tuple[bool | None, bool]
) -> None:
    history.many(ham, False, DAY, **domain_mail())
    history.many(junk, True, 2 * DAY, **domain_mail())
    assert said(history.judge()) == (*expected, "msgfromdomain")


@pytest.mark.parametrize(("senders", "conclusive"), [(3, True), (2, False)])
def test_all_junk_rejects_a_domain_with_three_different_senders(
    any_history: History, senders: int, conclusive: bool
) -> None:
    for n in range(4):
        any_history.add(True, DAY * (n + 1), **domain_mail(f"Sender{n % senders}"))
    assert said(any_history.judge()) == (True, conclusive, "msgfromdomain")


def test_domain_looks_at_the_newest_20(history: History) -> None:
    for n in range(20):
        history.add(True, DAY + n * timedelta(minutes=1), **domain_mail(f"s{n % 3}"))
    history.many(30, False, 3 * DAY, **domain_mail())
    assert said(history.judge()) == (True, True, "msgfromdomain")


@pytest.mark.parametrize(("age", "found"), [(DOMAIN_WINDOW - DAY, True), (DOMAIN_WINDOW + DAY, False)])
def test_domain_window_is_two_years(history: History, age: timedelta, found: bool) -> None:
    history.add(False, age, **domain_mail())
    assert (history.judge().method == "msgfromdomain") is found


def test_organisational_domain_after_the_domain(history: History) -> None:
    news = domain_mail(domain="news.sender.example") | {"msg_from_org_domain": "sender.example"}
    history.add(False, **news)
    found = history.judge(msg_from_domain="mail.sender.example", msg_from="a@mail.sender.example")
    assert said(found) == (False, True, "msgfromorgdomain")


def test_sent_to_the_domain_or_organisational_domain(any_history: History) -> None:
    record_sent_recipient(any_history.session, any_history.account_id, "carol@sender.example")
    assert said(any_history.judge()) == (False, True, "msgtodomain")
    sub = {"msg_from": "a@sub.sender.example", "msg_from_domain": "sub.sender.example"}
    assert said(any_history.judge(**sub)) == (False, True, "msgtoorgdomain")
    assert any_history.judge(msg_from_validated=False) == NO_HISTORY


# (d) DKIM and SPF/EHLO domains.


@pytest.mark.parametrize(
    ("junk", "ham", "expected"),
    [(1, 10, (False, True)), (1, 9, (None, False)), (10, 1, (True, True)), (9, 1, (None, False))],
)  # junk ratio < 0.1 ham (1/11 yes, 1/10 no); > 0.9 junk (10/11 yes, 9/10 no)
def test_dkimspf_ratios(history: History, junk: int, ham: int, expected: tuple[bool | None, bool]) -> None:
    history.many(junk, True, DAY, dkim_domains="dkim.example")
    history.many(ham, False, 2 * DAY, dkim_domains="dkim.example")
    assert said(history.judge()) == (*expected, "dkimspf")


@pytest.mark.parametrize(
    "signal",
    [
        {"dkim_domains": "other.example dkim.example"},
        {"spf_mailfrom_validated": True, "mail_from_domain": "bounce.example"},
        {"ehlo_validated": True, "ehlo": "mx.relay.example"},
    ],
)
def test_dkimspf_signals(history: History, signal: dict[str, Any]) -> None:
    history.add(True, **signal)
    assert said(history.judge()) == (True, True, "dkimspf")


def test_unvalidated_spf_and_ehlo_are_no_signal(history: History) -> None:
    history.add(True, spf_mailfrom_validated=False, mail_from_domain="bounce.example")
    history.add(True, ehlo_validated=False, ehlo="mx.relay.example")
    assert history.judge() == NO_HISTORY


def test_dkimspf_counts_a_message_once_and_looks_at_the_newest_50(any_history: History) -> None:
    both = {"dkim_domains": "dkim.example", "spf_mailfrom_validated": True}
    both["mail_from_domain"] = "bounce.example"
    any_history.many(50, False, DAY, **both)
    any_history.many(60, True, 3 * DAY, **both)
    assert said(any_history.judge()) == (False, True, "dkimspf")


@pytest.mark.parametrize(("age", "found"), [(DKIMSPF_WINDOW - DAY, True), (DKIMSPF_WINDOW + DAY, False)])
def test_dkimspf_window_is_half_a_year(history: History, age: timedelta, found: bool) -> None:
    history.add(True, age, dkim_domains="dkim.example")
    assert (history.judge().method == "dkimspf") is found


def test_a_forward_leaves_out_the_forwarders_spf_and_ehlo(history: History) -> None:
    history.add(True, spf_mailfrom_validated=True, mail_from_domain="bounce.example")
    history.add(True, remote_ip="192.0.2.10")
    assert history.judge(forwarded=True) == NO_HISTORY


# (e) The sending IP.


@pytest.mark.parametrize(
    ("kind", "ips", "needed"),
    [
        ("ip1", ["192.0.2.10"], 2),
        ("ip2", ["192.0.2.11", "192.0.2.62"], 5),
        ("ip3", ["192.0.2.70", "192.0.7.1"], 10),
        ("ip1", ["2001:db8:1:2::10"], 2),
        ("ip2", ["2001:db8:1:3::1"], 5),
        ("ip3", ["2001:db8:2::1"], 10),
    ],
)
def test_ip_networks_need_2_5_10_messages(history: History, kind: str, ips: list[str], needed: int) -> None:
    ip = "2001:db8:1:2::99" if ":" in ips[0] else "192.0.2.10"
    for n in range(needed - 1):
        history.add(True, DAY + n * timedelta(minutes=1), remote_ip=ips[n % len(ips)])
    assert said(history.judge(remote_ip=ip)) == (True, False, kind)
    history.add(True, 3 * DAY, remote_ip=ips[0])
    assert said(history.judge(remote_ip=ip)) == (True, True, kind)


def test_ip_majority_decides(any_history: History) -> None:
    any_history.many(2, False, DAY, remote_ip="192.0.2.10")
    any_history.many(2, True, 2 * DAY, remote_ip="192.0.2.10")
    assert said(any_history.judge()) == (False, True, "ip1")
    any_history.add(True, 3 * DAY, remote_ip="192.0.2.10")
    assert said(any_history.judge()) == (True, True, "ip1")


@pytest.mark.parametrize(("age", "found"), [(IP_WINDOW - DAY, True), (IP_WINDOW + DAY, False)])
def test_ip_window_is_a_quarter_year(history: History, age: timedelta, found: bool) -> None:
    history.add(True, age, remote_ip="192.0.2.10")
    assert (history.judge().method == "ip1") is found


def test_steps_stop_at_the_first_that_finds_messages(history: History) -> None:
    history.many(3, False, DAY, remote_ip="192.0.2.10")
    history.many(3, True, DAY, dkim_domains="dkim.example")
    assert said(history.judge()) == (True, True, "dkimspf")
    history.many(6, False, DAY, **domain_mail())
    assert said(history.judge()) == (False, True, "msgfromdomain")


# Cost.


def test_mail_without_history_costs_two_statements(any_history: History) -> None:
    """Most mail: no flagged message shares a signal with it and the user never wrote to its sender.
    One history read over every signal and one sent-to lookup say so, not a dozen statements."""
    any_history.add(True, mailbox=any_history.other, **MESSAGE)  # another mailbox's: not this history
    any_history.add(True, FROM_WINDOW + DAY, **MESSAGE)  # older than any step looks
    record_sent_recipient(any_history.session, any_history.account_id, "dave@elsewhere.example")
    any_history.session.flush()
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    engine = any_history.session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert any_history.judge() == NO_HISTORY
        assert len(statements) == 2, statements
        statements.clear()
        assert any_history.judge(msg_from_validated=False) == NO_HISTORY
        assert len(statements) == 1, "no sent-to lookup for a From that is not validated"
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_each_lookup_is_a_range_scan_of_the_history_index(history: History) -> None:
    history.many(3, True, DAY, **MESSAGE)
    signals = [("dkim", "dkim.example"), ("spf", "bounce.example"), ("ehlo", "mx.relay.example")]
    for used in (signals[:1], signals):
        query = history_query(history.inbox, used, NOW - DAY, 50)
        compiled = query.compile(history.session.get_bind())
        params = tuple(str(compiled.params[name]) for name in compiled.positiontup or ())
        plan = history.session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
        scans = [row[-1] for row in plan if re.match(r"(SCAN|SEARCH) message_signals", row[-1])]
        assert len(scans) == len(used), plan  # one range scan per signal, none of the whole table
        index = "SEARCH message_signals USING INDEX ix_message_signals_history"
        assert all(s.startswith(index) for s in scans), plan


def test_the_first_look_probes_the_history_index_once_per_signal(history: History) -> None:
    """The statement every message costs: the mailbox's ids and one index probe per signal."""
    signals = signals_of(MESSAGE)
    query = _destination_look(len(signals))
    values = {"b_account": "alice", "b_mailbox": "Inbox", **flagged_values(signals, NOW - DAY)}
    compiled = query.compile(history.session.get_bind())
    params = tuple(values[name] for name in compiled.positiontup or ())
    plan = history.session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
    scans = [row[-1] for row in plan if re.match(r"(SCAN|SEARCH) message_signals", row[-1])]
    assert len(scans) == len(signals), plan
    assert all(s.startswith("SEARCH message_signals USING INDEX ix_message_signals_history") for s in scans)


def test_on_postgresql_each_lookup_is_an_index_scan_of_the_history_index(postgres_url: str) -> None:
    """With a history the size of a busy mailbox's and fresh statistics, PostgreSQL's planner picks
    the partial index on its own: one index scan per signal, no sequential scan."""
    upgrade_database(postgres_url)
    with session_scope(postgres_url) as session:
        history = History(session)
        history.many(3, True, DAY, **MESSAGE)
        message_id = session.scalar(select(MessageSignal.message_id).limit(1))
        session.execute(insert(MessageSignal), [busy_signal(history, message_id, n) for n in range(20_000)])
        session.execute(text("ANALYZE message_signals"))
        signals = [("dkim", "dkim.example"), ("spf", "bounce.example"), ("ehlo", "mx.relay.example")]
        for used in (signals[:1], signals):
            plan = explain(session, history_query(history.inbox, used, NOW - DAY, 50))
            assert "Seq Scan" not in plan, plan
            assert len(HISTORY_SCAN.findall(plan)) == len(used), plan


HISTORY_SCAN = re.compile(r"Index (Only )?Scan (Backward )?using ix_message_signals_history")


def explain(session: Session, query: Select[Any]) -> str:
    """PostgreSQL's plan for the query, as EXPLAIN prints it."""
    compiled = query.compile(session.get_bind())
    rows = session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars()
    return "\n".join(rows)


def busy_signal(history: History, message_id: int | None, n: int) -> dict[str, Any]:
    """A signal row of other mail: many senders, most of it flagged."""
    kind = ("dkim", "spf", "ehlo", "domain", "ip1")[n % 5]
    return {
        "message_id": message_id,
        "mailbox_orig_id": history.inbox,
        "kind": kind,
        "value": f"sender{n % 4000}.example",
        "received": NOW - (n % 300) * DAY,
        "junk": n % 3 == 0,
        "notjunk": n % 3 == 1,
    }
