"""The outgoing side of reporting (postmaster only): DMARC evaluations waiting for our aggregate
reports, the report jobs' last runs, our TLS results by day and their failures, and the report
suppression lists with add and remove forms.

Every read and change goes through the tables' owner modules, the functions `postwarden dmarc ...`
and `postwarden tlsrpt ...` call. Names in the tables come from outside (policy domains from From
fields, MX host names from DNS, comments): control characters are shown as escapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.config import Config
from app.db import session_scope
from app.dmarcreports.evaluations import PendingDomain, pending_domains
from app.logs import escape_control_in
from app.models.base import utcnow
from app.reportsuppress import (
    KINDS,
    MAX_ADDRESS,
    MAX_COMMENT,
    ReportKind,
    SuppressionError,
    suppress,
    suppression_until,
    suppressions,
    unsuppress,
)
from app.tlsreports.results import DayTotal, FailureGroup, daily_totals, failure_groups
from app.web.auth import admin_page, check_form_token
from app.web.charts import Bar, stacked_days
from app.web.reports import TLS_SERIES
from app.web.security import posted_form
from app.web.status import JobStatus, last_job_runs, report_runs

SHOWN_DOMAINS = 200
SHOWN_FAILURES = 50
SHOWN_SUPPRESSIONS = 500
# Results are kept until 48 h after their day ends (SPEC R5.2): today and the three days before hold
# all there is.
TLS_DAYS = 4
KIND_NAMES: dict[str, str] = {"dmarc": "DMARC reports", "tlsrpt": "TLS reports"}
# Every session counts once against the recipient domain's policy and once against the MX host's.
POLICY_NAMES = {
    (False, "sts"): "MTA-STS (recipient domain)",
    (False, "no-policy-found"): "no policy (recipient domain)",
    (True, "tlsa"): "DANE (MX host)",
    (True, "no-policy-found"): "no policy (MX host)",
}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Suppressed:
    address: str
    until: datetime
    comment: str
    created: datetime


@dataclass(frozen=True)
class Outgoing:
    """What the page shows, strings escaped (escape_control_in)."""

    pending: list[PendingDomain]
    more_domains: bool  # more policy domains wait than are shown
    runs: dict[str, JobStatus | None]
    days: list[DayTotal]
    failures: list[FailureGroup]
    suppressed: dict[str, list[Suppressed]]  # by list kind
    since: date  # the first day of `days`' period; the last is `until`
    until: date

    @property
    def tls_chart(self) -> Markup:
        return tls_chart(self.days, self.since, self.until)


def policy_name(is_host: bool, policy_type: str) -> str:
    return POLICY_NAMES.get((is_host, policy_type), policy_type)


def _day_order(total: DayTotal) -> tuple[int, int]:
    """Newest day first; in a day, the policies in POLICY_NAMES' order (an unknown one last)."""
    known = list(POLICY_NAMES)
    key = (total.is_host, total.policy_type)
    return -total.day.toordinal(), known.index(key) if key in known else len(known)


def tls_chart(days: list[DayTotal], since: date, until: date) -> Markup:
    """Sessions per day, succeeded and failed, as counted against the recipient domain's policy
    (each session once)."""
    totals: dict[date, tuple[int, int]] = {}
    for total in days:
        if not total.is_host:
            ok, failed = totals.get(total.day, (0, 0))
            totals[total.day] = (ok + total.successful, failed + total.failed)
    bars = [Bar(day, counts) for day, counts in sorted(totals.items())]
    label = "TLS sessions of our deliveries per day"
    return stacked_days(label, TLS_SERIES, bars, since, until, "No TLS results recorded.")


def _outgoing(database_url: str) -> Outgoing:
    today = utcnow().date()
    since = today - timedelta(days=TLS_DAYS - 1)
    with session_scope(database_url) as session:
        pending = pending_domains(session, limit=SHOWN_DOMAINS + 1)
        shown = Outgoing(
            pending=pending[:SHOWN_DOMAINS],
            more_domains=len(pending) > SHOWN_DOMAINS,
            runs=report_runs(last_job_runs(session)),
            days=sorted(daily_totals(session, since), key=_day_order),
            failures=failure_groups(session, since, SHOWN_FAILURES),
            suppressed={kind: _suppressed(session, kind) for kind in KINDS},
            since=since,
            until=today,
        )
    escaped: Outgoing = escape_control_in(shown)
    return escaped


def _suppressed(session: Session, kind: ReportKind) -> list[Suppressed]:
    entries = suppressions(session, kind, limit=SHOWN_SUPPRESSIONS)
    return [Suppressed(e.address, e.until, e.comment, e.created) for e in entries]


def _render(request: Request, outgoing: Outgoing, status_code: int = 200, **context: Any) -> Response:
    context = {
        "out": outgoing,
        "kind_names": KIND_NAMES,
        "policy_name": policy_name,
        "shown_suppressions": SHOWN_SUPPRESSIONS,
        "form": {},
        **context,
    }
    return request.app.state.templates.TemplateResponse(
        request, "outgoing.html", context, status_code=status_code
    )


@admin_page
async def outgoing_page(request: Request) -> Response:
    config: Config = request.app.state.config
    outgoing = await run_in_threadpool(_outgoing, config.resolved_database_url)
    added, removed = request.query_params.get("added"), request.query_params.get("removed")
    flash = None
    if added in KIND_NAMES:
        flash = f"Added to the {KIND_NAMES[added]} suppression list."
    elif removed in KIND_NAMES:
        flash = f"Removed from the {KIND_NAMES[removed]} suppression list."
    return _render(request, outgoing, flash=flash)


@admin_page
async def suppression_action(request: Request) -> Response:
    """Add an address to a suppression list (until a day, with a comment) or remove one; back to the
    page, or the page again with the form filled in and why nothing changed (400)."""
    config: Config = request.app.state.config
    form = await posted_form(request)
    check_form_token(request, form)
    action, kind = form.get("action", ""), form.get("kind", "")
    try:
        problem = await run_in_threadpool(_change, config.resolved_database_url, action, kind, form)
    except SuppressionError as e:
        problem = f"Nothing changed: {e}."
    if problem is None:
        done = "added" if action == "add" else "removed"
        return RedirectResponse(f"/outgoing?{done}={kind}#suppressions", status_code=303)
    outgoing = await run_in_threadpool(_outgoing, config.resolved_database_url)
    shown = {name: form.get(name, "")[:MAX_COMMENT] for name in ("kind", "address", "until", "comment")}
    form_again = shown if action == "add" else {}
    return _render(request, outgoing, status_code=400, problem=problem, problem_at=action, form=form_again)


def _change(database_url: str, action: str, kind: str, form: dict[str, str]) -> str | None:
    """Apply the form: None when done, else why not (SuppressionError for what the list refuses)."""
    if kind not in KINDS or action not in ("add", "remove"):
        return "Choose the list: DMARC reports or TLS reports."
    address = form.get("address", "").strip()
    if not address:
        return "Enter an address (localpart@domain)."
    if len(address) > MAX_ADDRESS:
        return f"The address is longer than {MAX_ADDRESS} characters."
    list_kind: ReportKind = "dmarc" if kind == "dmarc" else "tlsrpt"
    if action == "remove":
        with session_scope(database_url) as session:
            removed = unsuppress(session, list_kind, address)
        return None if removed else f"{address!r} is not on the {KIND_NAMES[kind]} suppression list."
    last_day = form.get("until", "").strip()
    if last_day and not _DAY.fullmatch(last_day):
        return "The last day must be a date (YYYY-MM-DD), or empty for 30 days from now."
    try:
        until = suppression_until(date.fromisoformat(last_day) if last_day else None)
    except ValueError as e:  # SuppressionError (a past day) or a day no calendar has
        return f"The last day {e}." if isinstance(e, SuppressionError) else f"{last_day} is not a date."
    with session_scope(database_url) as session:
        suppress(session, list_kind, address, until, form.get("comment", "").strip())
    return None
