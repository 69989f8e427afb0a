"""`postwarden <dmarc|tlsrpt> suppress add|list|remove`: the report suppression list (app/reportsuppress.py).

One set of commands serves both report kinds; `suppress_commands` hangs them under a kind's group.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click

from app.cli.common import echo, emit_json, exit_if_database_unusable, json_option, load
from app.db import session_scope
from app.reportsuppress import (
    ReportKind,
    SuppressionError,
    suppress,
    suppression_until,
    suppressions,
    unsuppress,
)

if TYPE_CHECKING:  # rows app/reportsuppress.py hands over
    from app.models import ReportSuppression

DAY = click.DateTime(formats=["%Y-%m-%d"])


def suppression_row(entry: ReportSuppression) -> dict[str, Any]:
    return {
        "address": entry.address,
        "until": entry.until.isoformat(),
        "comment": entry.comment,
        "created": entry.created.isoformat(),
    }


def fail(message: str) -> NoReturn:
    echo(f"postwarden: {message}", err=True)
    sys.exit(1)


def suppress_commands(parent: click.Group, kind: ReportKind, reports: str) -> click.Group:
    """Add `suppress add|list|remove` for `kind` to `parent`; `reports` names them ("DMARC reports")."""

    @parent.group("suppress", help=f"Addresses that get no {reports} until a date.")
    def group() -> None:
        pass

    @group.command("add", help=f"Send no {reports} to ADDRESS until the date.")
    @click.argument("address")
    @click.option("--until", type=DAY, help="Last day of suppression, UTC (default: 30 days from now).")
    @click.option("--comment", default="", help="Why (shown in the list).")
    @click.pass_context
    def add(ctx: click.Context, address: str, until: datetime | None, comment: str) -> None:
        config = load(ctx)
        try:
            end = suppression_until(until.date() if until else None)
        except SuppressionError as e:
            fail(f"--until {e}")
        url = config.resolved_database_url
        with exit_if_database_unusable(url), session_scope(url) as session:
            try:
                row = suppression_row(suppress(session, kind, address, end, comment))
            except SuppressionError as e:
                fail(str(e))
        echo(f"suppressed {row['address']} until {row['until']}")

    @group.command("list", help=f"The addresses that get no {reports}.")
    @click.option("--all", "include_expired", is_flag=True, help="Include expired entries.")
    @json_option
    @click.pass_context
    def list_(ctx: click.Context, include_expired: bool, as_json: bool) -> None:
        config = load(ctx)
        url = config.resolved_database_url
        with exit_if_database_unusable(url), session_scope(url) as session:
            rows = [suppression_row(e) for e in suppressions(session, kind, include_expired)]
        if as_json:
            emit_json(rows)
            return
        if not rows:
            echo("no suppressed addresses")
        for row in rows:
            comment = f"  ({row['comment']})" if row["comment"] else ""
            echo(f"{row['address']}  until {row['until']}{comment}")

    @group.command("remove", help=f"Send {reports} to ADDRESS again.")
    @click.argument("address")
    @click.pass_context
    def remove(ctx: click.Context, address: str) -> None:
        config = load(ctx)
        url = config.resolved_database_url
        with exit_if_database_unusable(url), session_scope(url) as session:
            try:
                removed = unsuppress(session, kind, address)
            except SuppressionError as e:
                fail(str(e))
        if not removed:
            fail(f"{address} is not on the {reports} suppression list")
        echo(f"removed {address}")

    return group
