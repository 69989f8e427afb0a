"""The TLS probe page (postmaster only): what delivery to a domain would do now (app/queue/probe.py).

GET /tls-probe?domain=D probes without connecting (DNS and the MTA-STS fetch only). The test
sessions with the MX hosts open connections on the admin's behalf, so they are a POST carrying the
session's CSRF token, as every form that acts does.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app.address import AddressError, validate_address
from app.config import Config
from app.dns import resolver_from_config
from app.logs import escape_control_in
from app.queue.probe import probe
from app.web.auth import admin_page, check_form_token
from app.web.security import posted_form

MAX_DOMAIN_INPUT = 253


@admin_page
async def probe_page(request: Request) -> Response:
    config: Config = request.app.state.config
    if request.method == "POST":
        form = await posted_form(request)
        check_form_token(request, form)
        domain, connect = form.get("domain", ""), True
    else:
        domain, connect = request.query_params.get("domain", ""), False
    domain = domain.strip().lower().rstrip(".")
    context: dict[str, Any] = {"domain": domain[:MAX_DOMAIN_INPUT], "result": None, "problem": None}
    if domain:
        context["problem"] = _domain_problem(domain)
    if domain and context["problem"] is None:
        resolver = resolver_from_config(config.dns, cache=False)
        result = await probe(config, resolver, domain, connect=connect)
        context.update(result=escape_control_in(result), connected=connect)
    status = 400 if context["problem"] else 200
    return request.app.state.templates.TemplateResponse(request, "probe.html", context, status_code=status)


def _domain_problem(domain: str) -> str | None:
    """Why `domain` is not a domain name to probe; the address check's rules for its domain part."""
    try:
        validate_address(f"postmaster@{domain}", smtputf8=True)
    except AddressError as e:
        return f"Not a domain name: {e}."
    return None
