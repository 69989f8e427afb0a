"""`postwarden dmarc ...`: DMARC evaluations waiting for aggregate reports, the report run, suppressions.

postwarden dmarc evaluations [DOMAIN] [--json]
postwarden dmarc send-reports [--now] [--json]
postwarden dmarc suppress add ADDRESS [--until YYYY-MM-DD] [--comment TEXT]
postwarden dmarc suppress list [--all] [--json]
postwarden dmarc suppress remove ADDRESS
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import timedelta

import click

from app.cli.common import echo, emit_json, exit_if_database_unusable, json_option, load, main
from app.cli.suppress import suppress_commands
from app.db import session_scope
from app.dmarcreports.evaluations import pending_domains
from app.dmarcreports.job import send_dmarc_reports
from app.logs import setup_logging


@main.group("dmarc")
def dmarc() -> None:
    """DMARC aggregate reports (RFC 9990) we send about mail we received."""


@dmarc.command("evaluations")
@click.argument("domain", required=False)
@json_option
@click.pass_context
def evaluations(ctx: click.Context, domain: str | None, as_json: bool) -> None:
    """Evaluations waiting for a report, per policy domain (or for DOMAIN)."""
    config = load(ctx)
    url = config.resolved_database_url
    with exit_if_database_unusable(url), session_scope(url) as session:
        pending = pending_domains(session, domain)
    if as_json:
        emit_json([asdict(p) for p in pending])
        return
    if not pending:
        echo("no pending evaluations" + (f" for {domain}" if domain else ""))
    for p in pending:
        echo(
            f"{p.policy_domain}  {p.evaluations} evaluations ({p.optional} optional), "
            f"{p.first:%Y-%m-%d %H:%M} - {p.last:%Y-%m-%d %H:%M} UTC, "
            f"reported from {p.next_report:%Y-%m-%d %H:%M} UTC"
        )


@dmarc.command("send-reports")
@click.option(
    "--now", is_flag=True, help="Make every report due at once instead of spreading them over the hour."
)
@json_option
@click.pass_context
def send_reports(ctx: click.Context, now: bool, as_json: bool) -> None:
    """Run the hourly report job once: report every interval that has ended."""
    config = load(ctx)
    setup_logging(config.log_level, config.log_format)
    with exit_if_database_unusable(config.resolved_database_url):
        summary = asyncio.run(send_dmarc_reports(config, spacing=timedelta(0) if now else None))
    if as_json:
        emit_json(asdict(summary))
        return
    echo(f"run {summary.cid}: {summary.outcome()}")
    for report_id in summary.reports:
        echo(f"queued report {report_id}")


suppress_commands(dmarc, "dmarc", "DMARC reports")
