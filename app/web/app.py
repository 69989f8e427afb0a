"""The web process's ASGI app: login, the status and DNS pages, the account's mail (app/web/mail.py),
`/health`, `/metrics` and the stylesheet."""

from __future__ import annotations

import logging
import math
import secrets
import time
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from app.config import Config
from app.db import engine_for, session_scope
from app.dns import resolver_from_config
from app.dnsrecords import DNSRecordsError, check_domain, mta_sts_policy, records_for_domain
from app.jobs import probe_write
from app.models.base import utcnow
from app.web.auth import MAIL_HOME, admin_page, login, login_form, logout, page_context
from app.web.mail import mailbox_page, mailboxes_page, message_action, message_page
from app.web.metrics import metrics_registry
from app.web.outgoing import outgoing_page, suppression_action
from app.web.probe import probe_page
from app.web.queuepage import drop_page, queue_page, retry_action
from app.web.reports import report_page, reports_page
from app.web.security import Refused, SecurityHeaders
from app.web.status import ServerStatus, report_runs, server_status

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
MIN_SECRET_LENGTH = 16
HEALTH_PROBE_SECONDS = 2.0


class WebSetupError(Exception):
    """The web app cannot start; the message says why."""


def session_secret(config: Config) -> str:
    """The secret sessions and login forms are keyed with, from `web.secret_key_file`; without one,
    random (sessions end at restart)."""
    path = config.web.secret_key_file
    if path is None:
        log.warning("web.secret_key_file is not set: sessions end when the web process restarts")
        return secrets.token_urlsafe(32)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise WebSetupError(f"web.secret_key_file {str(path)!r} cannot be read: {e}") from None
    if len(secret) < MIN_SECRET_LENGTH:
        raise WebSetupError(
            f"web.secret_key_file {str(path)!r} holds {len(secret)} characters; "
            f"use at least {MIN_SECRET_LENGTH} random ones"
        )
    return secret


def database_problem(database_url: str) -> str | None:
    """None if the database takes a write on a migrated table, else what went wrong (for the log).

    A read alone succeeds on a database that refuses every write (read-only file or session): the
    probe updates no row, which still needs the write lock, and rolls back."""
    try:
        with engine_for(database_url).connect() as connection:
            probe_write(connection)
            connection.rollback()
    except SQLAlchemyError as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


async def health(request: Request) -> Response:
    """Status only: anyone may ask, so the database's own error text goes to the log, not the reply.
    The probe takes the database's write lock, so its answer is reused for HEALTH_PROBE_SECONDS: a
    stream of requests must not contend with the mail processes' writes."""
    state = request.app.state
    checked, problem = state.health_probe
    if time.monotonic() - checked >= HEALTH_PROBE_SECONDS:
        problem = await run_in_threadpool(database_problem, state.config.resolved_database_url)
        state.health_probe = (time.monotonic(), problem)
    if problem is not None:
        log.error("health: database problem: %s", problem)
        return JSONResponse({"status": "error", "database": "error"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(generate_latest, request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def database_unavailable(request: Request, error: Exception) -> Response:
    """Any page or scrape the database cannot answer: 503 and one log line, not a traceback page."""
    log.error("%s %s: database problem: %s", request.method, request.url.path, str(error).splitlines()[0])
    return PlainTextResponse("The database is unavailable; see the web process's log.\n", status_code=503)


async def refused(request: Request, error: Exception) -> Response:
    """A refused request (security.Refused): its status and message on the error page."""
    assert isinstance(error, Refused)
    context = {"message": error.message}
    return request.app.state.templates.TemplateResponse(
        request, "error.html", context, status_code=error.status_code, headers=error.headers
    )


def _status(database_url: str) -> ServerStatus:
    with session_scope(database_url) as session:
        return server_status(session, utcnow())


@admin_page
async def status_page(request: Request) -> Response:
    config: Config = request.app.state.config
    status = await run_in_threadpool(_status, config.resolved_database_url)
    context = {"status": status, "reports": report_runs(status.last_runs), "config": config}
    return request.app.state.templates.TemplateResponse(request, "status.html", context)


@admin_page
async def dns_page(request: Request) -> Response:
    config: Config = request.app.state.config
    domain = request.path_params.get("domain") or next(iter(sorted(config.domains)), None)
    context = {"domains": sorted(config.domains), "domain": domain}
    if domain is None:
        return request.app.state.templates.TemplateResponse(request, "dns.html", context)
    if domain not in config.domains:
        context["message"] = f"{domain} is not a configured domain."
        return request.app.state.templates.TemplateResponse(request, "error.html", context, status_code=404)
    try:
        records = records_for_domain(config, domain)
    except DNSRecordsError as e:
        context["message"] = str(e)
        return request.app.state.templates.TemplateResponse(request, "error.html", context, status_code=500)
    context.update(records=records, policy=mta_sts_policy(config, domain), checks=None)
    if request.query_params.get("check"):
        context["checks"] = await check_domain(config, domain, resolver_from_config(config.dns))
    return request.app.state.templates.TemplateResponse(request, "dns.html", context)


def create_app(config: Config) -> Starlette:
    """The app for `config`; raises WebSetupError if it cannot run (e.g. an unreadable secret)."""
    routes = [
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", status_page),
        Route("/dns", dns_page),
        Route("/dns/{domain}", dns_page),
        Route("/tls-probe", probe_page, methods=["GET", "POST"]),
        Route("/outgoing", outgoing_page),
        Route("/outgoing/suppressions", suppression_action, methods=["POST"]),
        Route("/queue", queue_page),
        Route("/queue/{id}/retry", retry_action, methods=["POST"]),
        Route("/queue/{id}/drop", drop_page, methods=["GET", "POST"]),
        Route("/reports", reports_page),
        Route("/reports/{kind}/{id}", report_page),
        Route(MAIL_HOME, mailboxes_page),
        Route("/mailbox/{name:path}", mailbox_page),
        Route("/message/{id}", message_page),
        Route("/messages", message_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={SQLAlchemyError: database_unavailable, Refused: refused},
    )
    app.state.config = config
    app.state.health_probe = (-math.inf, None)  # (when probed, the problem found)
    app.state.secret = session_secret(config)
    app.state.templates = Jinja2Templates(directory=TEMPLATES_DIR, context_processors=[page_context])
    app.state.registry = metrics_registry(config.resolved_database_url, config.resolved_metrics_dir)
    return app
