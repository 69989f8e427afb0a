"""A queue row whose file is not in place yet (found by tests/test_chaos.py).

The store commits a message's rows before it renames the file into place (app/store/files.py); a delivery
run that claimed a row in between found no file and failed the message for good (5.3.0 bounce), although
its sender had a 250. Such rows are now given back, no attempt counted, and go with the next sweep;
a file that is gone for good (in neither place) still fails its rows.
"""

from __future__ import annotations

from pathlib import Path

from app.models.base import utcnow
from app.queue.outgoing import RELEASE_DELAY
from app.store.files import PATH_SEPARATOR_IN_TMP
from tests.queue import test_deliver
from tests.queue.test_deliver import MX, World
from tests.support.smtppeers import smtp_peer

world = test_deliver.world  # the fixture


def move_to_tmp(world: World, queue_id: int) -> tuple[str, Path]:
    """Put the row's file back where the store keeps it between its commit and its rename."""
    assert world.config is not None
    (row,) = [r for r in world.rows() if r.id == queue_id]
    pending = world.config.data_dir / "tmp" / "0661a1a893b6d2005cb70000"
    pending.mkdir(parents=True)
    (world.config.data_dir / row.path).rename(pending / row.path.replace("/", PATH_SEPARATOR_IN_TMP))
    return row.path, pending


async def test_a_row_whose_file_awaits_its_rename_waits_for_the_next_sweep(world: World) -> None:
    with smtp_peer(None) as peer:
        world.configure(peer.port)
        world.mx(MX)
        (queue_id,) = world.queue()
        path, pending = move_to_tmp(world, queue_id)

        report = await world.run(queue_id)
        assert report.failed == [] and report.deferred == [] and report.delivered == []
        (row,) = world.rows()
        assert (row.attempts, row.lease_owner, row.last_error) == (0, None, None), "given back, no attempt"
        # Due again a little later, not at once (a run with a full batch would take it straight back).
        assert utcnow() < row.next_attempt <= utcnow() + RELEASE_DELAY
        assert world.mailbox("admin", "Inbox") == [], "no failure DSN"

        assert world.config is not None
        (pending / path.replace("/", PATH_SEPARATOR_IN_TMP)).rename(world.config.data_dir / path)
        assert (await world.run(queue_id)).delivered == [], "not due yet"
        world.make_due()  # RELEASE_DELAY has passed
        report = await world.run(queue_id)
    assert report.delivered == [queue_id] and world.rows() == []
    assert len(peer.received) == 1


async def test_a_file_gone_for_good_still_fails_its_rows(world: World) -> None:
    with smtp_peer(None) as peer:
        world.configure(peer.port)
        world.mx(MX)
        (queue_id,) = world.queue()
        (row,) = world.rows()
        assert world.config is not None
        (world.config.data_dir / row.path).unlink()
        report = await world.run(queue_id)
    assert report.failed == [queue_id] and world.rows() == []
    ((_, dsn),) = world.mailbox("admin", "Inbox")
    assert b"message file unreadable" in dsn and b"Status: 5.3.0" in dsn
