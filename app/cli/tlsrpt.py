"""`postwarden tlsrpt ...`: TLS results recorded for reports, running the report job, suppressions.

postwarden tlsrpt results [DOMAIN] [--day YYYY-MM-DD] [--json]
postwarden tlsrpt send-reports [--now] [--json]
postwarden tlsrpt suppress add ADDRESS [--until YYYY-MM-DD] [--comment TEXT]
postwarden tlsrpt suppress list [--all] [--json]
postwarden tlsrpt suppress remove ADDRESS
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from app.cli.common import echo, emit_json, exit_if_database_unusable, json_option, load, main
from app.cli.suppress import DAY, suppress_commands
from app.db import session_scope
from app.logs import setup_logging
from app.models.base import utcnow
from app.tlsreports.job import send_tls_reports
from app.tlsreports.posts import PostSummary, post_due_reports
from app.tlsreports.results import failures_by_result, results_for

if TYPE_CHECKING:  # rows app/tlsreports/results.py hands over
    from app.models import TLSResult


@main.group("tlsrpt")
def tlsrpt() -> None:
    """TLS reports (RFC 8460) we send about our deliveries."""


def _result_row(row: TLSResult, failures: list[Any]) -> dict[str, Any]:
    return {
        "day": row.day.isoformat(),
        "recipient_domain": row.recipient_domain,
        "policy_domain": row.policy_domain,
        "is_host": row.is_host,
        "policy_type": row.policy_type,
        "successful": row.success_count,
        "failed": row.failure_count,
        "recipient_report_sent": row.recipient_report_sent,
        "host_report_sent": row.host_report_sent,
        "failure_details": [
            {
                "result_type": f.detail.result_type,
                "sessions": f.sessions,
                "receiving_mx_hostname": f.detail.receiving_mx_hostname,
                "receiving_ip": f.detail.receiving_ip,
                "sending_ip": f.detail.sending_ip,
                "failure_reason_code": f.detail.failure_reason_code,
            }
            for f in failures
        ],
    }


def _report_state(row: dict[str, Any]) -> str:
    """Whether the row's report(s) went out: the recipient domain's, and the MX host's if it has one."""
    state = f"report {'done' if row['recipient_report_sent'] else 'pending'}"
    if row["is_host"] and row["policy_domain"] != row["recipient_domain"]:
        state += f", host report {'done' if row['host_report_sent'] else 'pending'}"
    return state


@tlsrpt.command("results")
@click.argument("domain", required=False)
@click.option("--day", type=DAY, help="Only this UTC day (YYYY-MM-DD).")
@json_option
@click.pass_context
def results(ctx: click.Context, domain: str | None, day: datetime | None, as_json: bool) -> None:
    """TLS results per policy and UTC day, for DOMAIN (as recipient domain or policy domain) or all."""
    config = load(ctx)
    name = domain.lower().rstrip(".") if domain else None
    with (
        exit_if_database_unusable(config.resolved_database_url),
        session_scope(config.resolved_database_url) as s,
    ):
        rows = results_for(s, name, day.date() if day else None)
        failures = failures_by_result(s, [r.id for r in rows])
        listed = [_result_row(r, failures.get(r.id, [])) for r in rows]
    if as_json:
        emit_json(listed)
        return
    if not listed:
        echo(
            "no TLS results" + (f" for {name}" if name else "") + (f" on {day:%Y-%m-%d}" if day else "")
        )
        return
    for r in listed:
        policy = f"{r['policy_type']} {r['policy_domain']}" + (" (MX host)" if r["is_host"] else "")
        counts = f"{r['successful']} ok, {r['failed']} failed; {_report_state(r)}"
        echo(f"{r['day']}  to {r['recipient_domain']}  {policy}: {counts}")
        for f in r["failure_details"]:
            where = " ".join(v for v in (f["receiving_mx_hostname"], f["receiving_ip"]) if v)
            echo(f"    {f['result_type']} x{f['sessions']} {where}".rstrip())


@tlsrpt.command("send-reports")
@click.option("--now", "immediately", is_flag=True, help="Send at once: no spreading, POST https rua now.")
@json_option
@click.pass_context
def send_reports(ctx: click.Context, immediately: bool, as_json: bool) -> None:
    """Run the daily report job once, for the days before today (UTC)."""
    config = load(ctx)
    setup_logging(config.log_level, config.log_format)
    with exit_if_database_unusable(config.resolved_database_url):
        run = asyncio.run(send_tls_reports(config, spacing=timedelta(0) if immediately else None))
        # The reports' due times are on the run's clock (the database's).
        now = run.clock or utcnow()
        posts = asyncio.run(post_due_reports(config, now, limit=100_000)) if immediately else PostSummary()
    if as_json:
        emit_json({"cid": run.cid, "outcome": run.outcome(), "reports": run.reports, "https": asdict(posts)})
        return
    echo(f"tls reports (cid {run.cid}): {run.outcome()}")
    for report_id in run.reports:
        echo(f"  {report_id}")
    if posts.posted or posts.retrying or posts.dropped:
        counts = (
            f"{len(posts.posted)} posted, {len(posts.retrying)} to retry later, {len(posts.dropped)} dropped"
        )
        echo(f"https: {counts}")


# The suppression list, shared with DMARC reports (app/reportsuppress.py, kind "tlsrpt").
suppress_commands(tlsrpt, "tlsrpt", "TLS reports")
