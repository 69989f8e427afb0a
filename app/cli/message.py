"""Sorting stored messages: `message move ID... --to MAILBOX [--copy]`, `message flag ID...`.

Both call the store's one function for it (app/store/mailboxes.py, SPEC R3.3), as the web does, so
a move here changes reputation exactly as one there. IDs are taken as `message show` takes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import click
from sqlalchemy.orm import Session

from app.accounts import account_name
from app.cli.common import echo, emit_json, json_option, load
from app.cli.inspect import account_named, database_session, fail, message_group, message_named
from app.store import mailboxes
from app.store.mailboxes import MailboxError, MoveRules

ACCOUNT_OPTION = click.option(
    "--account", default=None, help="The account the messages must be of (refused if one is not)."
)


def _account_of(session: Session, idents: Sequence[str], account: str | None) -> tuple[int, str, list[int]]:
    """The account of the messages with these IDs, as (id, name), and their row ids: all must be of
    one account, `account` if given."""
    messages = [message_named(session, ident) for ident in idents]
    names = [str(account_name(session, m["account_id"])) for m in messages]
    if account is not None:
        account_named(session, account)  # an unknown account is its own error
        for ident, name in zip(idents, names, strict=True):
            if name != account:
                fail(f"message {ident!r} is of account {name!r}, not {account!r}")
    elif len(set(names)) > 1:
        fail(f"the messages are of several accounts ({', '.join(sorted(set(names)))}): give --account")
    return messages[0]["account_id"], names[0], [m["id"] for m in messages]


@message_group.command("move")
@click.argument("idents", metavar="ID...", nargs=-1, required=True)
@click.option("--to", "target", required=True, help="The mailbox to move them into.")
@click.option("--copy", is_flag=True, help="Add a copy there instead; the messages stay where they are.")
@ACCOUNT_OPTION
@json_option
@click.pass_context
def message_move(
    ctx: click.Context, idents: tuple[str, ...], target: str, copy: bool, account: str | None, as_json: bool
) -> None:
    """Move messages to the mailbox --to of their account. Out of Rejects a message counts as
    delivered where it was meant to go; into Junk it is marked junk, out of Junk or Rejects not junk."""
    config = load(ctx)
    with database_session(config) as s:
        account_id, name, row_ids = _account_of(s, idents, account)
        if name not in config.accounts:
            fail(f"account {name!r} is not in the config, so its Junk and Rejects mailboxes are unknown")
        ids = _or_fail(
            lambda: mailboxes.move_messages(
                s, account_id, row_ids, target, rules=MoveRules.of(config, name), copy=copy
            )
        )
    if as_json:
        emit_json({"account": name, "mailbox": target, "copy": copy, "ids": ids})
        return
    done = "copied" if copy else "moved"
    echo(f"{done} {len(ids)} message(s) of {name} to {target}: {' '.join(map(str, ids))}")


@message_group.command("flag")
@click.argument("idents", metavar="ID...", nargs=-1, required=True)
@click.option("--junk/--notjunk", default=None, help="Mark as junk, or as not junk (clears the other).")
@click.option("--seen/--unseen", default=None, help="Mark as seen, or as not seen.")
@ACCOUNT_OPTION
@json_option
@click.pass_context
def message_flag(
    ctx: click.Context,
    idents: tuple[str, ...],
    junk: bool | None,
    seen: bool | None,
    account: str | None,
    as_json: bool,
) -> None:
    """Set flags on messages. Junk and not junk are what reputation learns from."""
    if junk is None and seen is None:
        raise click.UsageError("give --junk, --notjunk, --seen or --unseen")
    config = load(ctx)
    with database_session(config) as s:
        account_id, name, row_ids = _account_of(s, idents, account)
        changed = _or_fail(
            lambda: mailboxes.set_flags(
                s, account_id, row_ids, seen=seen, junk=junk or None, notjunk=(junk is False) or None
            )
        )
    if as_json:
        emit_json({"account": name, "ids": row_ids, "changed": changed})
        return
    echo(f"changed {changed} of {len(row_ids)} message(s) of {name}")


Result = TypeVar("Result")


def _or_fail(change: Callable[[], Result]) -> Result:
    """What `change()` returns; a MailboxError ends the command with its message."""
    try:
        return change()
    except MailboxError as e:
        fail(str(e))
