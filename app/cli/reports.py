"""`postwarden reports import|list|show`: incoming DMARC aggregate and TLS reports (SPEC §6), stored by
app/inreports/store.py. `import` reads files (XML, JSON, gzip, zip or a whole message) without R6.2's
sender checks, which need the original delivery."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from app.cli import common
from app.cli.common import ROW_ID, ROW_LIMIT, echo, emit_json, json_option, load, main
from app.db import session_scope
from app.inreports import store
from app.inreports.errors import ReportError
from app.inreports.read import read_file
from app.inreports.unpack import MAX_MESSAGE

KIND = click.Choice(["dmarc", "tls"])


def _kind(name: str) -> store.ReportKind:
    return "tls" if name == "tls" else "dmarc"


@main.group("reports")
def reports_group() -> None:
    """Import and look into incoming DMARC and TLS reports."""


FILES = click.Path(exists=True, dir_okay=False, path_type=Path)


@reports_group.command("import")
@click.argument("files", nargs=-1, required=True, type=FILES)
@json_option
@click.pass_context
def reports_import(ctx: click.Context, files: tuple[Path, ...], as_json: bool) -> None:
    """Parse and store report files; exit 1 if any was refused. A report already stored is kept once."""
    url = load(ctx).resolved_database_url
    outcomes = []
    with common.exit_if_database_unusable(url), session_scope(url) as session:
        for path in files:
            outcomes.append(_import_one(session, path))
    if as_json:
        emit_json(outcomes)
    else:
        for outcome in outcomes:
            echo(_outcome_line(outcome))
    if any(outcome["result"] == "refused" for outcome in outcomes):
        sys.exit(1)


def _import_one(session: Session, path: Path) -> dict[str, Any]:
    # A file longer than the largest message is refused whatever it holds, so one byte past that is
    # enough to tell; reading it all could take the host's memory.
    with path.open("rb") as file:
        raw = file.read(MAX_MESSAGE + 1)
    try:
        report = read_file(raw)
    except ReportError as e:
        return {"file": str(path), "result": "refused", "reason": e.reason, "detail": e.detail}
    outcome = store.store_report(session, report, raw)
    result = "stored" if isinstance(outcome, store.Stored) else "already stored"
    return {"file": str(path), "result": result} | _summary_dict(outcome.summary)


def _summary_dict(summary: store.Summary) -> dict[str, Any]:
    return {key: getattr(summary, key) for key in summary.__dataclass_fields__}


def _outcome_line(outcome: dict[str, Any]) -> str:
    if outcome["result"] == "refused":
        return f"{outcome['file']}: refused: {outcome['reason']} ({outcome['detail']})"
    counted = "records" if outcome["kind"] == "dmarc" else "policies"
    what = f"{outcome['kind']} #{outcome['id']} from {outcome['reporter']}"
    return (
        f"{outcome['file']}: {outcome['result']}: {what}"
        f" for {outcome['domain']}, report id {outcome['report_id']}, {outcome['records']} {counted},"
        f" {outcome['messages']} {'messages' if outcome['kind'] == 'dmarc' else 'sessions'}"
    )


@reports_group.command("list")
@click.option("--kind", type=KIND, default=None, help="Only DMARC or only TLS reports.")
@click.option("--domain", default=None, help="Only reports about this domain.")
@click.option("--limit", type=ROW_LIMIT, default=store.DEFAULT_LIMIT, show_default=True)
@json_option
@click.pass_context
def reports_list(ctx: click.Context, kind: str | None, domain: str | None, limit: int, as_json: bool) -> None:
    """List stored reports, newest first."""
    url = load(ctx).resolved_database_url
    with common.exit_if_database_unusable(url), session_scope(url) as session:
        found = store.list_reports(session, _kind(kind) if kind else None, domain, limit)
    rows = [_summary_dict(summary) for summary in found]
    if as_json:
        emit_json(rows)
        return
    echo(f"{'KIND':5} {'ID':>6} {'BEGIN (UTC)':16} {'DOMAIN':30} {'ROWS':>5} {'COUNT':>8} REPORTER")
    for row in rows:
        echo(
            f"{row['kind']:5} {row['id']:6} {row['begin']:%Y-%m-%d %H:%M} {row['domain'][:30]:30}"
            f" {row['records']:5} {row['messages']:8} {row['reporter']}"
        )
    echo(f"{len(rows)} report(s)")


@reports_group.command("show")
@click.argument("kind", type=KIND)
@click.argument("ident", metavar="ID", type=ROW_ID)
@json_option
@click.pass_context
def reports_show(ctx: click.Context, kind: str, ident: int, as_json: bool) -> None:
    """Show a stored report with its records (DMARC) or policies and failures (TLS)."""
    url = load(ctx).resolved_database_url
    with common.exit_if_database_unusable(url), session_scope(url) as session:
        detail = store.report_detail(session, _kind(kind), ident)
    if detail is None:
        sys.exit(f"postwarden: no {kind} report {ident} (see `postwarden reports list`)")
    if as_json:
        emit_json(detail)
        return
    rows = detail.pop("records" if kind == "dmarc" else "policies")
    for key, value in detail.items():
        echo(f"{key}: {value}")
    for row in rows:
        failures = row.pop("failures", [])
        echo("  " + " ".join(f"{key}={value}" for key, value in row.items()))
        for failure in failures:
            echo("    failure " + " ".join(f"{key}={value}" for key, value in failure.items()))
