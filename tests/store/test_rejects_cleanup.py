"""The cleanup of Rejects (SPEC R3.1), on SQLite and PostgreSQL: old rejects and those beyond the
count go with their files and signal rows; nothing else does; the job records its run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.accounts import ensure_account
from app.config import Config, load_config
from app.db import session_scope
from app.jobs import job_named
from app.models import JobRun, Message, MessageSignal
from app.models.base import utcnow
from app.store import mailboxes
from app.store.mailboxes import find_message, remove_old_rejects
from app.store.signals import add_signals
from tasks import mailboxes as mailbox_tasks
from tasks.celery_app import settings
from tests.store.test_mailboxes import set_received, store
from tests.support.configs import write_config

SETTINGS = """
[rejects]
keep_days = 14
keep_max = 3

[accounts.bob]
addresses = ["bob@example.org"]
rejects_mailbox = "Refused"
"""
DAY = timedelta(days=1)


@pytest.fixture
def config_path(tmp_path: Path, url: str) -> Path:
    return write_config(tmp_path / "config", SETTINGS, database_url=url)


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


def add(config: Config, account: str, mailbox: str, name: str, age: timedelta) -> str:
    """A reject received `age` ago, with its file and signal rows; its file id."""
    path = config.data_dir / "messages" / "20260101" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"Subject: x\r\n\r\n")
    with session_scope(config.resolved_database_url) as session:
        ensure_account(session, account)
        row_id = store(session, account, mailbox, name, msg_from="spam@example.net", is_reject=True)
        set_received(session, row_id, utcnow() - age)
        message = find_message(session, row_id)
        assert message is not None
        add_signals(session, [(row_id, message, False)])
    return name


def kept(config: Config) -> set[str]:
    """The file ids of the rows left, checked to be those of the files left; no signal row outlives
    its message."""
    files = {p.name for p in (config.data_dir / "messages").rglob("*") if p.is_file()}
    with session_scope(config.resolved_database_url) as session:
        rows = set(session.scalars(select(Message.file_id)))
        signals = select(func.count(MessageSignal.id))
        assert session.scalar(signals.where(MessageSignal.message_id.not_in(select(Message.id)))) == 0
        assert session.scalar(signals) == len(rows)  # one signal each (its From)
    assert rows == files
    return rows


def test_old_rejects_and_those_beyond_the_count_are_removed(config: Config) -> None:
    old = {add(config, "admin", "Rejects", f"old{i}", 15 * DAY + i * DAY) for i in range(3)}
    recent = [add(config, "admin", "Rejects", f"new{i}", i * DAY) for i in range(5)]
    bob_old = add(config, "bob", "Refused", "bob-old", 20 * DAY)
    others = {
        add(config, "admin", "Inbox", "inbox-old", 100 * DAY),  # not a Rejects mailbox
        add(config, "admin", "Refused", "not-admins-rejects", 100 * DAY),
        add(config, "bob", "Refused", "bob-recent", DAY),
        add(config, "bob", "Rejects", "not-bobs-rejects", 100 * DAY),
        add(config, "carol", "Rejects", "carol-not-configured", 100 * DAY),
    }
    # admin: 3 too old, then of the 5 recent ones the 2 oldest are beyond keep_max; bob: 1 too old.
    assert remove_old_rejects(config) == 3 + 2 + 1
    assert kept(config) == {*recent[:3], *others}
    assert old.isdisjoint(kept(config)) and bob_old not in kept(config)
    assert remove_old_rejects(config) == 0


def test_removal_goes_in_batches(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailboxes, "REJECTS_BATCH", 2)
    names = [add(config, "admin", "Rejects", f"r{i}", timedelta(hours=i)) for i in range(8)]
    names.append(add(config, "admin", "Rejects", "too-old", 15 * DAY))
    assert remove_old_rejects(config) == 6
    assert kept(config) == set(names[:3])


@pytest.fixture
def task_config(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The tasks' config (tasks/celery_app.py `settings`) is this test's."""
    monkeypatch.setenv("POSTWARDEN_CONFIG", str(config_path))
    settings.cache_clear()
    yield
    settings.cache_clear()


def test_the_job_records_its_run(config: Config, task_config: None) -> None:
    add(config, "admin", "Rejects", "r1", 30 * DAY)
    assert job_named("remove_old_rejects").task == mailbox_tasks.remove_old_rejects_task.name
    assert mailbox_tasks.remove_old_rejects_task() == 1
    assert kept(config) == set()
    with session_scope(config.resolved_database_url) as session:
        run = session.scalars(select(JobRun).where(JobRun.job == "remove_old_rejects")).one()
    assert run.outcome == "1 message(s) removed" and run.finished is not None
