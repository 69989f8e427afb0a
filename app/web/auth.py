"""Form login against account passwords, the session that remembers it, and who may see what.

The status and DNS pages are for the postmaster account (the admin); any account may log in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.accounts import verify_password
from app.db import session_scope

log = logging.getLogger(__name__)

SESSION_ACCOUNT = "account"
Endpoint = Callable[[Request], Awaitable[Response]]


def logged_in_account(request: Request) -> str | None:
    """The account of the session, if it is still in the config (a removed account is logged out)."""
    account = request.session.get(SESSION_ACCOUNT)
    return account if account in request.app.state.config.accounts else None


def is_admin(account: str | None, request: Request) -> bool:
    return account is not None and account == request.app.state.config.postmaster.account


def safe_next(target: str | None) -> str:
    """Only a local path: a login link must not send the user to another site after logging in."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def admin_page(endpoint: Endpoint) -> Endpoint:
    """Redirect to the login form without a session; 403 for accounts other than the admin."""

    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        account = logged_in_account(request)
        if account is None:
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="/"
            )
            return RedirectResponse(f"/login?next={target}", status_code=303)
        if not is_admin(account, request):
            return request.app.state.templates.TemplateResponse(
                request,
                "error.html",
                {"account": account, "message": "This page is for the postmaster account."},
                status_code=403,
            )
        return await endpoint(request)

    return guarded


async def login_form(request: Request) -> Response:
    return _login_page(request, None, safe_next(request.query_params.get("next")), status_code=200)


async def login(request: Request) -> Response:
    form = await request.form()
    account = str(form.get("account", "")).strip()
    password = str(form.get("password", ""))
    next_page = safe_next(str(form.get("next", "")))
    config = request.app.state.config
    # Always pay for one scrypt (~0.1 s, off the event loop), so timing tells nothing about accounts.
    ok = await run_in_threadpool(_check_password, config.resolved_database_url, account, password)
    if not ok or account not in config.accounts:
        log.info("web login failed for %r from %s", account, request.client.host if request.client else "-")
        return _login_page(request, "Wrong account name or password.", next_page, status_code=401)
    request.session.clear()
    request.session[SESSION_ACCOUNT] = account
    return RedirectResponse(next_page, status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def _check_password(database_url: str, account: str, password: str) -> bool:
    with session_scope(database_url) as session:
        return verify_password(session, account, password)


def _login_page(request: Request, error: str | None, next_page: str, status_code: int) -> Response:
    context = {"error": error, "next": next_page, "account": None}
    return request.app.state.templates.TemplateResponse(
        request, "login.html", context, status_code=status_code
    )
