"""The incoming report pages (postmaster only): per domain and period, what DMARC and TLS reporters
told us (app/inreports/store.py's dashboard queries), and each report as parsed and as it arrived.

Everything a report says is the reporter's text: the templates escape it as HTML and it goes
through escape_control_in first, so a control character shows as an escape. The reverse names of
the top sources come from DNS, which the sender controls: one that is not a host name is not shown.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import dns.exception
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from app.auth.message import ascii_domain
from app.config import Config
from app.db import session_scope
from app.dns import DNSError, Resolver, resolver_from_config
from app.inreports import store
from app.logs import escape_control_in, escape_control_lines
from app.models.base import utcnow
from app.web.auth import admin_page
from app.web.charts import Bar, Series, stacked_days
from app.web.security import Refused

PERIODS = (7, 30, 90, 365)
DEFAULT_PERIOD = 30
PTR_SECONDS = 2.0  # all reverse lookups of a page together; a slower one shows no name
REPORT_LIST_LIMIT = 100
DMARC_SERIES = (Series("Passed DMARC", "#2e7d32"), Series("Failed DMARC", "#c62828"))
TLS_SERIES = (Series("Succeeded", "#2e7d32"), Series("Failed", "#c62828"))
NO_REPORTS = "No reports in this period."


@dataclass(frozen=True)
class Period:
    days: int
    since: date
    until: date


@dataclass(frozen=True)
class Dashboard:
    """What the page shows of one domain and period (its text escaped)."""

    dmarc_chart: Markup
    tls_charts: list[tuple[str, Markup]]
    sources: list[store.Source]
    names: dict[str, str]
    reporters: list[store.ReporterCount]
    failures: list[store.TLSFailureCount]
    reports: list[store.Summary]


@admin_page
async def reports_page(request: Request) -> Response:
    config: Config = request.app.state.config
    period = _period(request.query_params.get("days"))
    domains = await run_in_threadpool(_domains, config)
    domain = _domain(request.query_params.get("domain"), domains)
    context: dict[str, Any] = {"domains": domains, "domain": domain, "period": period, "periods": PERIODS}
    context["report_limit"] = REPORT_LIST_LIMIT
    if domain is not None:
        context["board"] = await _dashboard(config, domain, period)
    return request.app.state.templates.TemplateResponse(request, "reports.html", context)


@admin_page
async def report_page(request: Request) -> Response:
    kind = request.path_params["kind"]
    ident = request.path_params["id"]
    if kind not in ("dmarc", "tls") or not ident.isdigit() or len(ident) > 18:
        raise Refused(404, "No such report.")
    config: Config = request.app.state.config
    detail, raw = await run_in_threadpool(_report, config.resolved_database_url, kind, int(ident))
    if detail is None:
        raise Refused(404, "No such report.")
    context = {"kind": kind, "report": escape_control_in(detail), "raw": raw}
    return request.app.state.templates.TemplateResponse(request, f"report_{kind}.html", context)


def _period(value: str | None) -> Period:
    """The period asked for (days up to today, UTC): one of PERIODS, else 400."""
    if value is None or value == "":
        days = DEFAULT_PERIOD
    elif value.isdigit() and int(value) in PERIODS:
        days = int(value)
    else:
        choices = ", ".join(map(str, PERIODS))
        raise Refused(400, f"The period must be one of {choices} days.")
    until = utcnow().date()
    return Period(days, until - timedelta(days=days - 1), until)


def _domain(value: str | None, domains: list[str]) -> str | None:
    """The domain asked for (by default the first listed); 400 if it is not a domain name, 404 if no
    report is about it and it is not ours."""
    if not value:
        return domains[0] if domains else None
    domain = ascii_domain(value[:300])
    if not domain:
        raise Refused(400, "The domain is not a domain name.")
    if domain not in domains:
        raise Refused(404, f"No report is about {domain} and it is not a configured domain.")
    return domain


def _domains(config: Config) -> list[str]:
    """The domains with reports and our configured domains, sorted."""
    with session_scope(config.resolved_database_url) as session:
        reported = store.report_domains(session)
    ours = filter(None, (ascii_domain(domain) for domain in config.domains))
    return sorted(set(reported) | set(ours))


@dataclass(frozen=True)
class _Rows:
    """The dashboard queries' answers for one domain and period."""

    dmarc_days: list[store.DMARCDay]
    sources: list[store.Source]
    reporters: list[store.ReporterCount]
    tls_days: list[store.TLSDay]
    failures: list[store.TLSFailureCount]
    reports: list[store.Summary]


async def _dashboard(config: Config, domain: str, period: Period) -> Dashboard:
    rows = await run_in_threadpool(_read, config.resolved_database_url, domain, period)
    resolver = resolver_from_config(config.dns, cache=False)
    names = await reverse_names(resolver, [source.source_ip for source in rows.sources])
    return Dashboard(
        dmarc_chart=_dmarc_chart(rows.dmarc_days, period),
        tls_charts=_tls_charts(rows.tls_days, period),
        sources=escape_control_in(rows.sources),
        names=names,
        reporters=escape_control_in(rows.reporters),
        failures=escape_control_in(rows.failures),
        reports=escape_control_in(rows.reports),
    )


def _read(database_url: str, domain: str, period: Period) -> _Rows:
    since, until = period.since, period.until
    with session_scope(database_url) as session:
        listed = store.list_reports(session, domain=domain, limit=REPORT_LIST_LIMIT)
        return _Rows(
            dmarc_days=store.dmarc_days(session, domain, since, until),
            sources=store.top_sources(session, domain, since, until),
            reporters=store.dmarc_reporters(session, domain, since, until),
            tls_days=store.tls_days(session, domain, since, until),
            failures=store.tls_failures(session, domain, since, until),
            reports=[s for s in listed if since <= s.begin.date() <= until],
        )


def _report(
    database_url: str, kind: store.ReportKind, ident: int
) -> tuple[dict[str, Any] | None, str | None]:
    """The report's parsed fields and its raw document as text (control characters escaped), or
    None for a document not kept."""
    with session_scope(database_url) as session:
        detail = store.report_detail(session, kind, ident)
        raw = store.report_raw(session, kind, ident) if detail is not None else None
    text = escape_control_lines(raw.decode("utf-8", errors="replace")) if raw is not None else None
    if detail is not None and kind == "dmarc":
        detail["records"] = [
            record | {"results": _results(record["auth_results"])} for record in detail["records"]
        ]
    return detail, text


def _results(auth_results: str) -> list[str]:
    """A record's stored authentication results (JSON lists, app/inreports/store.py) as lines to show."""
    try:
        results = json.loads(auth_results)
        lines = [
            f"DKIM {domain}{f' selector {selector}' if selector else ''}: {result}"
            for domain, selector, result in results.get("dkim", [])
        ]
        lines += [
            f"SPF {domain} ({scope or 'mfrom'}): {result}" for domain, scope, result in results.get("spf", [])
        ]
        return lines + [f"reason {kind}: {comment}" for kind, comment in results.get("reasons", [])]
    except (ValueError, TypeError, AttributeError):  # not as the store writes it: shown as it is
        return [auth_results]


def _dmarc_chart(days: list[store.DMARCDay], period: Period) -> Markup:
    bars = [Bar(day.day, (day.passed, day.failed)) for day in days]
    label = f"Messages passing and failing DMARC per day, {period.since} to {period.until}"
    return stacked_days(label, DMARC_SERIES, bars, period.since, period.until, NO_REPORTS)


def _tls_charts(days: list[store.TLSDay], period: Period) -> list[tuple[str, Markup]]:
    """One chart per policy type reported (sts, tlsa, no-policy-found); one saying so without any."""
    kinds = sorted({day.policy_type for day in days})
    charts = []
    for kind in kinds:
        bars = [Bar(day.day, (day.successful, day.failed)) for day in days if day.policy_type == kind]
        label = f"TLS sessions with policy type {kind} succeeding and failing per day"
        charts.append((kind, stacked_days(label, TLS_SERIES, bars, period.since, period.until, NO_REPORTS)))
    return charts or [("", stacked_days("", TLS_SERIES, [], period.since, period.until, NO_REPORTS))]


async def reverse_names(resolver: Resolver, ips: list[str]) -> dict[str, str]:
    """The PTR name of each IP that answers within PTR_SECONDS (all lookups at once) with a valid
    host name; the others are left out."""
    lookups = {ip: asyncio.ensure_future(_ptr(resolver, ip)) for ip in ips}
    if not lookups:
        return {}
    _, pending = await asyncio.wait(lookups.values(), timeout=PTR_SECONDS)
    for task in pending:
        task.cancel()
    return {ip: name for ip, task in lookups.items() if task not in pending and (name := task.result())}


async def _ptr(resolver: Resolver, ip: str) -> str:
    """The IP's first PTR name if it is a host name (a reporter's IP text and the DNS answer are both
    outside text), else ""."""
    try:
        names = await resolver.ptr(ip)
    except (DNSError, dns.exception.DNSException):  # the latter: not an IP address (reversename)
        return ""
    name = names[0] if names else ""
    return name if name and ascii_domain(name) == name else ""
