"""What every response and every posted form goes through: security headers, same-origin checks,
bounded form reading, the login form's CSRF token, and the Secure flag of cookies.

Each logged-in session has its own CSRF token (app/websessions.py). The login form, posted before
there is a session, carries HMAC(secret, nonce) where the nonce is in a cookie of its own: a page on
another site can neither read the nonce nor compute the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No inline script or style anywhere (the stylesheet is /static/style.css); no framing; forms post
# only to us.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
STATIC_PREFIX = "/static/"
LOGIN_COOKIE = "postwarden_login"
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 10
FORM_READ_SECONDS = 10.0  # a client trickling its form must not hold the request open
FORM_TYPE = "application/x-www-form-urlencoded"
DEFAULT_PORTS = {"http": 80, "https": 443}
_NONCE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


class Refused(Exception):
    """A request refused with a status and a message for the person (rendered by the app's handler)."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers or {}


class SecurityHeaders:
    """ASGI middleware: the headers above on every response; `Cache-Control: no-store` on all but the
    static files, so no page (logged-in pages, forms with tokens) is kept by a browser or proxy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = str(scope.get("path", "")).startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                ours = {name for name, _ in HEADERS} | ({b"cache-control"} if not cacheable else set())
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in ours]
                headers += HEADERS
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def same_origin(request: Request) -> bool:
    """Whether a POST came from one of our pages: its Origin (or, without one, its Referer) is our
    scheme, host and port. Browsers send Origin with every cross-site POST; a request with neither
    header is not a browser's cross-site form, and still needs its CSRF token."""
    source = request.headers.get("origin") or request.headers.get("referer")
    return source is None or _origin(source) == _origin(str(request.base_url))


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # e.g. a port that is not a number
        return None


async def posted_form(request: Request) -> dict[str, str]:
    """The fields of a form posted from our own pages, read up to MAX_FORM_BYTES (Refused otherwise)."""
    return dict(await posted_fields(request))


async def posted_fields(request: Request, max_fields: int = MAX_FORM_FIELDS) -> list[tuple[str, str]]:
    """posted_form's fields as (name, value) pairs in order, repeated names kept (checkboxes)."""
    if not same_origin(request):
        raise Refused(403, "This form was sent from another site; it is refused.")
    content_type = request.headers.get("content-type", FORM_TYPE).partition(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise Refused(415, "Send the form as application/x-www-form-urlencoded.")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise Refused(413, "The form is too large.")
    body = bytearray()
    try:
        async with asyncio.timeout(FORM_READ_SECONDS):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM_BYTES:
                    raise Refused(413, "The form is too large.")
    except TimeoutError:
        raise Refused(408, "The form took too long to arrive.") from None
    try:
        text = body.decode("utf-8", "replace")  # browsers percent-encode; a raw UTF-8 client is read too
        return parse_qsl(text, keep_blank_values=True, max_num_fields=max_fields)
    except ValueError:
        raise Refused(400, "The form has too many fields.") from None


def login_nonce(request: Request) -> str:
    """The nonce the login form's token is made from: the browser's, or a new one (set as a cookie)."""
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    return nonce if _NONCE.fullmatch(nonce) else secrets.token_urlsafe(32)


def login_token(secret: str, nonce: str) -> str:
    return hmac.new(secret.encode(), b"login-form\0" + nonce.encode(), hashlib.sha256).hexdigest()


def login_token_valid(request: Request, secret: str, token: str) -> bool:
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    # tokens_equal compares bytes: compare_digest on str raises for non-ASCII (a 500 for a forged form).
    return bool(_NONCE.fullmatch(nonce)) and tokens_equal(login_token(secret, nonce), token)


def tokens_equal(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def cookie_is_secure(request: Request) -> bool:
    """web.secure_cookies: "always", "never", or "auto" (the request came over HTTPS; uvicorn takes
    the scheme from X-Forwarded-Proto when the peer is one of web.trusted_proxies)."""
    mode = request.app.state.config.web.secure_cookies
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    path: str = "/",
) -> None:
    """HttpOnly, SameSite=Lax, and Secure as configured."""
    secure = cookie_is_secure(request)
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="lax", secure=secure)
