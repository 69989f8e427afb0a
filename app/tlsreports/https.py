"""Send a report to an `https:` rua (RFC 8460 §5.4): POST the gzipped JSON as application/tlsrpt+gzip.

The host name is resolved through `app.dns.Resolver` like every lookup in Postwarden; the request goes
to each address in turn (until one connects) with the name as SNI and Host, so the certificate is
verified for the name (PKIX, against the configured CA bundle or the system's). No redirects, no
proxies; any status other than 2xx is a failure.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.dns import DNSError, Resolver, is_ip_address
from app.tlsreports.report import MEDIA_TYPE

DEFAULT_TIMEOUT = 30.0


class PostError(Exception):
    """The report was not accepted; the message says why (for the log and the retry)."""


def _literal(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address


async def _addresses(host: str, resolver: Resolver) -> list[str]:
    if is_ip_address(host):
        return [host]
    try:
        addresses = await resolver.ips(host)
    except DNSError as e:
        raise PostError(f"cannot resolve {host}: {e}") from None
    if not addresses:
        raise PostError(f"{host} has no A or AAAA record")
    return addresses


async def post_report(
    url: str,
    gzipped: bytes,
    resolver: Resolver,
    *,
    ca_bundle: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """POST the report; return the HTTP status on 2xx, raise PostError otherwise."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme.lower() != "https" or not host:
        raise PostError(f"{url!r} is not an https URL")
    headers = {
        "Content-Type": MEDIA_TYPE,
        "Host": host if parts.port is None else f"{host}:{parts.port}",
        "User-Agent": "postwarden-tlsrpt",
    }
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    last_error = ""
    async with httpx.AsyncClient(
        verify=context, timeout=timeout, follow_redirects=False, trust_env=False
    ) as client:
        for address in await _addresses(host, resolver):
            netloc = _literal(address) if parts.port is None else f"{_literal(address)}:{parts.port}"
            target = urlunsplit(parts._replace(netloc=netloc))
            try:
                response = await client.post(
                    target, content=gzipped, headers=headers, extensions={"sni_hostname": host}
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                last_error = f"POST {url} ({address}): {type(e).__name__}: {e}"
                continue
            except httpx.HTTPError as e:
                raise PostError(f"POST {url} ({address}): {type(e).__name__}: {e}") from None
            if not 200 <= response.status_code < 300:
                raise PostError(f"POST {url}: HTTP {response.status_code} {response.reason_phrase}".rstrip())
            return response.status_code
    raise PostError(last_error)
