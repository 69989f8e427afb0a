"""Send a report to an `https:` rua (RFC 8460 §5.4): POST the gzipped JSON as application/tlsrpt+gzip.

The host name is resolved through `app.dns.Resolver` like every lookup in Postwarden; the request goes
to each address in turn (until one connects) with the name as SNI and Host, so the certificate is
verified for the name (PKIX, against the configured CA bundle or the system's). No redirects, no
proxies; any status other than 2xx is a failure.

The rua is chosen by the policy domain, so it is treated as hostile: only public addresses are used
(app/ssrf.py; connecting to the vetted address itself means a second lookup cannot switch it), the
response body is never read (the status is all we need), and `timeout` bounds the whole request,
lookup included, however slowly the server answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.dns import DNSError, Resolver, is_ip_address
from app.ssrf import AddressRefused, allowed_addresses
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
    allowed_networks: Sequence[str] = (),
) -> int:
    """POST the report; return the HTTP status on 2xx, raise PostError otherwise."""
    try:
        async with asyncio.timeout(timeout):
            return await _post(url, gzipped, resolver, ca_bundle, timeout, allowed_networks)
    except TimeoutError:
        raise PostError(f"POST {url}: not done within {timeout:g} s") from None


async def _post(
    url: str,
    gzipped: bytes,
    resolver: Resolver,
    ca_bundle: Path | None,
    timeout: float,
    allowed_networks: Sequence[str],
) -> int:
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme.lower() != "https" or not host:
        raise PostError(f"{url!r} is not an https URL")
    try:
        addresses = allowed_addresses(host, await _addresses(host, resolver), allowed_networks)
    except AddressRefused as e:
        raise PostError(f"POST {url}: {e}") from None
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
        for address in addresses:
            netloc = _literal(address) if parts.port is None else f"{_literal(address)}:{parts.port}"
            target = urlunsplit(parts._replace(netloc=netloc))
            request = client.build_request(
                "POST", target, content=gzipped, headers=headers, extensions={"sni_hostname": host}
            )
            try:
                # Streamed, and closed without reading the body: the receiver cannot make us read one.
                response = await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                last_error = f"POST {url} ({address}): {type(e).__name__}: {e}"
                continue
            except httpx.HTTPError as e:
                raise PostError(f"POST {url} ({address}): {type(e).__name__}: {e}") from None
            await response.aclose()
            if not 200 <= response.status_code < 300:
                # The status code only: the reason phrase is the receiver's text, unbounded.
                raise PostError(f"POST {url}: HTTP {response.status_code}")
            return response.status_code
    raise PostError(last_error)
