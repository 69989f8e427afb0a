"""Form login against account passwords, the server-side session that remembers it, and who may see
what.

Every account logs in with its own password and reads its own mail (app/web/mail.py); the status
and DNS pages are for the postmaster account (the admin) alone. Failed logins are throttled with
submission AUTH's (app/throttle.py): one scrypt per attempt whether or not the account exists, a
growing delay, then 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.accounts import account_id, account_name
from app.db import session_scope
from app.models.base import utcnow
from app.throttle import attempt_login
from app.web.security import (
    LOGIN_COOKIE,
    Refused,
    cookie_is_secure,
    login_nonce,
    login_token,
    login_token_valid,
    posted_form,
    set_cookie,
    tokens_equal,
)
from app.websessions import MAX_AGE, current_session, end_session, start_session

log = logging.getLogger(__name__)

SESSION_COOKIE = "postwarden_session"
MAX_TOKEN_LENGTH = 100  # a session cookie longer than any token we issue is not looked up
LOGGED_LOGIN_LENGTH = 100
Endpoint = Callable[[Request], Awaitable[Response]]
MAIL_HOME = "/mail"


@dataclass(frozen=True)
class LoggedIn:
    """A request's live session: its account by name and id."""

    account: str
    csrf_token: str
    account_id: int


async def logged_in(request: Request) -> LoggedIn | None:
    """The request's live session, if its account is still in the config (a removed account is
    logged out). Kept on request.state, where the templates' context (page_context) finds it."""
    if hasattr(request.state, "login"):
        return request.state.login
    token = request.cookies.get(SESSION_COOKIE, "")
    found = None
    if token and len(token) <= MAX_TOKEN_LENGTH:
        found = await run_in_threadpool(_load_session, request, token)
    request.state.login = found if found and found.account in request.app.state.config.accounts else None
    return request.state.login


def page_context(request: Request) -> dict[str, Any]:
    """What every template gets: the logged-in account and whether it is the admin (for the header's
    links) and the session's CSRF token (for the logout form and the mail forms)."""
    login: LoggedIn | None = getattr(request.state, "login", None)
    return {
        "account": login.account if login else None,
        "admin": is_admin(login.account if login else None, request),
        "csrf_token": login.csrf_token if login else "",
    }


def is_admin(account: str | None, request: Request) -> bool:
    return account is not None and account == request.app.state.config.postmaster.account


def safe_next(target: str | None) -> str:
    """Only a local path: a login link must not send the user to another site after logging in."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def account_page(endpoint: Endpoint) -> Endpoint:
    """Redirect to the login form without a session (back here after logging in)."""

    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        if await logged_in(request) is None:
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="/"
            )
            return RedirectResponse(f"/login?next={target}", status_code=303)
        return await endpoint(request)

    return guarded


def admin_page(endpoint: Endpoint) -> Endpoint:
    """As account_page; and 403 for accounts other than the admin."""

    @account_page
    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        if not is_admin(request.state.login.account, request):
            raise Refused(403, "This page is for the postmaster account.")
        return await endpoint(request)

    return guarded


def check_form_token(request: Request, form: dict[str, str]) -> None:
    """403 unless a form posted to an account_page carries the session's CSRF token."""
    if not tokens_equal(request.state.login.csrf_token, form.get("csrf_token", "")):
        raise Refused(403, "The form did not come from this site's page: reload it and try again.")


def home_page(account: str, request: Request) -> str:
    """Where a login without a page to return to lands: the status page for the admin, the
    mailboxes for everyone else (the status page would refuse them)."""
    return "/" if is_admin(account, request) else MAIL_HOME


async def login_form(request: Request) -> Response:
    return _login_page(request, None, safe_next(request.query_params.get("next")), status_code=200)


async def login(request: Request) -> Response:
    form = await posted_form(request)
    if not login_token_valid(request, request.app.state.secret, form.get("csrf_token", "")):
        raise Refused(403, "The login form has expired or did not come from this site: reload it and log in.")
    name, password = form.get("account", "").strip(), form.get("password", "")
    next_page = safe_next(form.get("next"))
    config = request.app.state.config
    ip = request.client.host if request.client else "-"
    account = name if name in config.accounts else None
    result = await run_in_threadpool(
        attempt_login, config.resolved_database_url, config.login_throttle, account, name, password, ip
    )
    shown = name[:LOGGED_LOGIN_LENGTH]
    if result.retry_after is not None:
        log.warning("web login refused: too many failed logins ip=%s login=%r", ip, shown)
        minutes = -(-result.retry_after // 60)
        message = f"Too many failed logins. Try again in {minutes} minute{'s' if minutes > 1 else ''}."
        raise Refused(429, message, {"Retry-After": str(result.retry_after)})
    if result.account is None:
        log.info("web login failed ip=%s login=%r failures=%d", ip, shown, result.failures)
        await asyncio.sleep(result.delay)  # a growing delay slows a guesser that waits for replies
        return _login_page(request, "Wrong account name or password.", next_page, status_code=401)
    old_token = request.cookies.get(SESSION_COOKIE, "")
    token = await run_in_threadpool(_start_session, request, result.account, old_token)
    landing = home_page(result.account, request) if next_page == "/" else next_page
    response = RedirectResponse(landing, status_code=303)
    set_cookie(response, request, SESSION_COOKIE, token, max_age=int(MAX_AGE.total_seconds()))
    return response


async def logout(request: Request) -> Response:
    form = await posted_form(request)
    login = await logged_in(request)
    if login is not None:
        if not tokens_equal(login.csrf_token, form.get("csrf_token", "")):
            raise Refused(403, "The logout form did not come from this site's page: reload it and try again.")
        await run_in_threadpool(_end_session, request, request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="lax", secure=cookie_is_secure(request))
    return response


def _load_session(request: Request, token: str) -> LoggedIn | None:
    with session_scope(request.app.state.config.resolved_database_url) as session:
        live = current_session(session, request.app.state.secret, token, utcnow())
        if live is None:
            return None
        account = account_name(session, live.account_id)
        return None if account is None else LoggedIn(account, live.csrf_token, live.account_id)


def _start_session(request: Request, account: str, old_token: str) -> str:
    """A new session (a fresh token: one planted before login is worthless); the old one ends."""
    secret = request.app.state.secret
    with session_scope(request.app.state.config.resolved_database_url) as session:
        if old_token:
            end_session(session, secret, old_token)
        return start_session(session, secret, account_id(session, account), utcnow())


def _end_session(request: Request, token: str) -> None:
    with session_scope(request.app.state.config.resolved_database_url) as session:
        end_session(session, request.app.state.secret, token)


def _login_page(request: Request, error: str | None, next_page: str, status_code: int) -> Response:
    nonce = login_nonce(request)
    context = {"error": error, "next": next_page, "login_token": login_token(request.app.state.secret, nonce)}
    response = request.app.state.templates.TemplateResponse(
        request, "login.html", context, status_code=status_code
    )
    set_cookie(response, request, LOGIN_COOKIE, nonce, path="/login")
    return response
