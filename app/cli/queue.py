"""`postwarden queue list|show|retry|drop`: look into and act on the outgoing queue."""

from __future__ import annotations

import sys
from typing import Any

import click

from app.auth.message import header_fields
from app.cli.common import echo, emit_json, exit_if_database_unusable, json_option, load, main
from app.config import Config
from app.db import session_scope
from app.models import OutgoingMessage
from app.models.base import utcnow
from app.queue import outgoing

SHOWN_HEADERS = ("from", "to", "subject", "date", "message-id")


def _columns(row: OutgoingMessage) -> dict[str, Any]:
    values = {column.key: getattr(row, column.key) for column in OutgoingMessage.__table__.columns}
    values["held"] = row.lease_until is not None and row.lease_until > utcnow()
    return values


def _rows(config: Config, ids: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    url = config.resolved_database_url
    with exit_if_database_unusable(url), session_scope(url) as session:
        return [_columns(row) for row in outgoing.list_rows(session, ids)]


@main.group("queue")
def queue_group() -> None:
    """Inspect and act on the outgoing queue."""


@queue_group.command("list")
@json_option
@click.pass_context
def queue_list(ctx: click.Context, as_json: bool) -> None:
    """List queued messages, next attempt first."""
    rows = _rows(load(ctx))
    if as_json:
        emit_json(rows)
        return
    echo(f"{'ID':>7} {'NEXT ATTEMPT (UTC)':19} {'TRIES':>5} {'FROM':28} {'TO':28} LAST ERROR")
    for row in rows:
        tries = f"{row['attempts']}/{row['max_attempts']}"
        when = "in progress" if row["held"] else f"{row['next_attempt']:%Y-%m-%d %H:%M:%S}"
        error = (row["last_error"] or "")[:60]
        echo(
            f"{row['id']:7} {when:19} {tries:>5} {row['sender'][:28]:28} {row['recipient'][:28]:28} {error}"
        )
    echo(f"{len(rows)} message(s) queued")


@queue_group.command("show")
@click.argument("queue_id", type=int, metavar="ID")
@json_option
@click.pass_context
def queue_show(ctx: click.Context, queue_id: int, as_json: bool) -> None:
    """Show one queued message: its queue row and its main header fields."""
    config = load(ctx)
    rows = _rows(config, (queue_id,))
    if not rows:
        sys.exit(f"postwarden: no queued message {queue_id} (see `postwarden queue list`)")
    details = rows[0]
    details["file"] = str(config.data_dir / details["path"])
    try:
        fields = header_fields((config.data_dir / details["path"]).read_bytes())
    except OSError as e:
        fields = []
        details["file_error"] = e.strerror
    details["headers"] = {name: value for name, value in fields if name.lower() in SHOWN_HEADERS}
    if as_json:
        emit_json(details)
        return
    for key, value in details.items():
        if key != "headers" and value not in (None, ""):
            echo(f"{key}: {value}")
    for name, value in details["headers"].items():
        echo(f"header {name}: {value}")


@queue_group.command("retry")
@click.argument("queue_ids", type=int, nargs=-1, metavar="[ID]...")
@click.option("--all", "retry_all", is_flag=True, help="Every queued message.")
@json_option
@click.pass_context
def queue_retry(ctx: click.Context, queue_ids: tuple[int, ...], retry_all: bool, as_json: bool) -> None:
    """Make messages due now; the next queue sweep (within a minute) sends them."""
    if bool(queue_ids) == retry_all:
        raise click.UsageError("give message IDs or --all (not both)")
    url = load(ctx).resolved_database_url
    with exit_if_database_unusable(url), session_scope(url) as session:
        retried = outgoing.retry_now(session, queue_ids)
    _report("retried", queue_ids, retried, as_json)


@queue_group.command("drop")
@click.argument("queue_ids", type=int, nargs=-1, required=True, metavar="ID...")
@json_option
@click.pass_context
def queue_drop(ctx: click.Context, queue_ids: tuple[int, ...], as_json: bool) -> None:
    """Remove messages from the queue without delivering them (no DSN is sent)."""
    config = load(ctx)
    url = config.resolved_database_url
    with exit_if_database_unusable(url), session_scope(url) as session:
        dropped, paths = outgoing.drop(session, queue_ids)
    outgoing.remove_unreferenced_files(config, paths)
    _report("dropped", queue_ids, dropped, as_json)


def _report(action: str, asked: tuple[int, ...], done: list[int], as_json: bool) -> None:
    """What was done; asked-for ids that were not (unknown, or held by a worker) make the exit status 1."""
    skipped = sorted(set(asked) - set(done))
    if as_json:
        emit_json({action: sorted(done), "skipped": skipped})
    else:
        echo(f"{action} {len(done)} message(s)")
        if skipped:
            ids = " ".join(map(str, skipped))
            echo(f"not {action} (not queued, or being delivered right now): {ids}", err=True)
    if skipped:
        sys.exit(1)
