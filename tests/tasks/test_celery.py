"""Tasks run on a real Celery worker, over the embedded filesystem broker and over Redis."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import redis

from app.config import load_config
from app.db import session_scope
from app.migrate import upgrade_database
from app.models import OutgoingMessage
from app.models.base import utcnow
from tests.support.celeryworker import celery_worker, client_for, wait_for_text
from tests.support.configs import write_config

REDIS_TEST_DB = "redis://127.0.0.1:6379/13"


@pytest.fixture(params=["filesystem://", REDIS_TEST_DB])
def broker_config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param.startswith("redis"):
        redis.Redis.from_url(request.param).flushdb()
    path = write_config(tmp_path / "config", broker_url=request.param)
    upgrade_database(load_config(path).resolved_database_url)
    return path


def queue_rows(config_file: Path, due: int, later: int) -> None:
    now = utcnow()
    with session_scope(load_config(config_file).resolved_database_url) as session:
        for i in range(due + later):
            session.add(
                OutgoingMessage(
                    sender="admin@example.org",
                    recipient=f"r{i}@example.net",
                    recipient_domain="example.net",
                    path=f"outgoing/{i}",
                    size=10,
                    next_attempt=now - timedelta(minutes=1) if i < due else now + timedelta(hours=1),
                )
            )


def test_sweep_queue_runs_on_a_worker_and_counts_due_rows(broker_config: Path, tmp_path: Path) -> None:
    queue_rows(broker_config, due=3, later=2)
    log = tmp_path / "worker.log"
    with celery_worker(broker_config, log):
        client_for(broker_config).send_task("tasks.mail.sweep_queue")
        wait_for_text(log, "queue sweep: 3 message(s) due")


def test_dmarc_evaluation_task_reaches_the_worker(broker_config: Path, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with celery_worker(broker_config, log):
        evaluation = {
            "policy_domain": "example.net",
            "evaluated": "2026-11-25T13:37:00+00:00",
            "rua": ["mailto:dmarc@example.net"],
            "policy": {"p": "reject"},
            "source_ip": "192.0.2.1",
            "disposition": "reject",
            "dkim_aligned": False,
            "spf_aligned": False,
            "header_from": "example.net",
        }
        client_for(broker_config).send_task("tasks.mail.record_dmarc_evaluation", args=[evaluation])
        stored = "dmarc evaluation stored policy_domain=example.net disposition=reject optional=False"
        wait_for_text(log, stored)


def test_worker_with_bad_config_exits_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('hostname = "mail.example.org"\n')
    log = tmp_path / "worker.log"
    with pytest.raises(AssertionError, match="process exited"), celery_worker(bad, log):
        pass
    content = log.read_text()
    assert "key 'postmaster' is required but missing" in content
    assert "Traceback" not in content
