"""`postwarden queue list|show|retry|drop`: look into and act on the outgoing queue.

`queue show` also answers for a message no longer queued: its delivery history (app/queue/history.py)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from app.auth.message import header_fields
from app.cli.common import ROW_ID, echo, emit_json, exit_if_database_unusable, json_option, load, main
from app.cli.inspect import row_number
from app.config import Config
from app.db import session_scope
from app.queue import history, outgoing
from app.queue.content import QueueContent, queue_content
from app.store.files import outgoing_path

if TYPE_CHECKING:  # rows app/queue/history.py hands over
    from app.models.queue import DeliveryAttempt

SHOWN_HEADERS = ("from", "to", "subject", "date", "message-id")
HISTORY_COLUMNS = ("attempted", "recipient", "result", "host", "ip", "tls", "reply_code", "reply")


def _columns(listed: outgoing.Listed) -> dict[str, Any]:
    row = listed.row
    values = outgoing.row_values(row)
    values["due"] = listed.due
    values["held"] = listed.held
    values["file_id"] = history.file_id_of(row.path)  # the id the submission's 250 reply gave
    return values


def _rows(config: Config) -> list[dict[str, Any]]:
    url = config.resolved_database_url
    with exit_if_database_unusable(url), session_scope(url) as session:
        return [_columns(listed) for listed in outgoing.list_rows(session)]


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
        echo(f"{row['id']:7} {when:19} {tries:>5} {row['sender'][:28]:28} {row['recipient'][:28]:28} {error}")
    echo(f"{len(rows)} message(s) queued, {sum(row['due'] for row in rows)} due")


@queue_group.command("show")
@click.argument("ident", metavar="ID")
@json_option
@click.pass_context
def queue_show(ctx: click.Context, ident: str, as_json: bool) -> None:
    """Show a message's queue row, main header fields and delivery history (each attempt's time,
    relay, TLS and reply; kept `[delivery] history_days` after delivery or failure). ID is the number
    `queue list` shows, or the id the submission's 250 reply gave: then every recipient's row."""
    config = load(ctx)
    entries = _entries(config, ident)
    if not entries:
        sys.exit(f"postwarden: no queued message or delivery history {ident!r} (see `postwarden queue list`)")
    if as_json:
        emit_json(entries[0] if row_number(ident) is not None else entries)
        return
    for number, entry in enumerate(entries):
        if number:
            echo("")
        _print_entry(entry)


def _entries(config: Config, ident: str) -> list[dict[str, Any]]:
    """One entry per queue row of the message: its columns while queued, and its kept attempts."""
    url = config.resolved_database_url
    with exit_if_database_unusable(url), session_scope(url) as session:
        queue_id = row_number(ident)
        if queue_id is not None:
            rows = outgoing.list_rows(session, (queue_id,))
            attempts = history.attempts_for(session, queue_ids=(queue_id,))
        else:
            rows = outgoing.list_rows(session, path=outgoing_path(ident))
            attempts = history.attempts_for(session, file_id=ident)
    entries = {listed.row.id: _columns(listed) | {"state": "queued", "history": []} for listed in rows}
    for attempt in attempts:  # oldest first: a finished row's state is its last attempt's result
        entry = entries.setdefault(attempt.queue_id, _finished(attempt))
        entry["history"].append(_attempt(attempt))
        if entry["state"] != "queued":
            # Gone after a deferral: `queue drop` took it.
            entry["state"] = "dropped" if attempt.result == "deferred" else attempt.result
    headers: dict[str, dict[str, Any]] = {}
    content = queue_content(config)
    for entry in entries.values():
        if "path" in entry:
            entry["file"] = content.location(entry["path"])
            if entry["path"] not in headers:
                headers[entry["path"]] = _headers(config, content, entry["path"])
            entry.update(headers[entry["path"]])
    return [entries[key] for key in sorted(entries)]


def _finished(attempt: DeliveryAttempt) -> dict[str, Any]:
    """The entry of a row that is gone (delivered or failed): what its attempts tell."""
    return {
        "id": attempt.queue_id,
        "file_id": attempt.file_id,
        "recipient": attempt.recipient,
        "state": attempt.result,
        "history": [],
    }


def _attempt(attempt: DeliveryAttempt) -> dict[str, Any]:
    return {key: getattr(attempt, key) for key in HISTORY_COLUMNS}


def _headers(config: Config, content: QueueContent, path: str) -> dict[str, Any]:
    try:
        with session_scope(config.resolved_database_url) as session:
            raw = content.read(session, path)
    except OSError as e:
        return {"headers": {}, "file_error": e.strerror or str(e)}
    if raw is None:
        return {"headers": {}, "file_error": "committed, not yet moved into place"}
    fields = header_fields(raw)
    return {"headers": {name: value for name, value in fields if name.lower() in SHOWN_HEADERS}}


def _print_entry(entry: dict[str, Any]) -> None:
    for key, value in entry.items():
        if key not in ("headers", "history") and value not in (None, ""):
            echo(f"{key}: {value}")
    for name, value in entry.get("headers", {}).items():
        echo(f"header {name}: {value}")
    for attempt in entry["history"]:
        reply = " ".join(str(part) for part in (attempt["reply_code"], attempt["reply"]) if part is not None)
        echo(
            f"attempt {attempt['attempted']:%Y-%m-%d %H:%M:%S} {attempt['result']} "
            f"relay={attempt['host'] or '-'} ip={attempt['ip'] or '-'} tls={attempt['tls'] or '-'} "
            f"reply: {reply}"
        )


@queue_group.command("retry")
@click.argument("queue_ids", type=ROW_ID, nargs=-1, metavar="[ID]...")
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
@click.argument("queue_ids", type=ROW_ID, nargs=-1, required=True, metavar="ID...")
@json_option
@click.pass_context
def queue_drop(ctx: click.Context, queue_ids: tuple[int, ...], as_json: bool) -> None:
    """Remove messages from the queue without delivering them (no DSN is sent)."""
    config = load(ctx)
    with exit_if_database_unusable(config.resolved_database_url):
        dropped = outgoing.drop_messages(config, queue_ids)
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
