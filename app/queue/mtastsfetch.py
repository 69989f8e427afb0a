"""MTA-STS (RFC 8461) from the network: the `_mta-sts` TXT record and the policy file over HTTPS.

`lookup_record` finds the record's id (§3.1); `fetch_policy_text` GETs the policy file (§3.3) within
its bounds: the recipient domain's public addresses only (app/ssrf.py), no redirects, no proxies, at
most MAX_POLICY_SIZE bytes, one timeout for the whole fetch. What the text says, and what to do with
it, is app/queue/mtasts.py's business. A failure is a `PolicyError` carrying its RFC 8460 result type.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from app.config import Delivery
from app.dns import DNSError, Resolver
from app.ssrf import AddressRefused, allowed_addresses

# RFC 8460 §4.3.2.2 result types of policy discovery.
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_POLICY_INVALID = "sts-policy-invalid"
STS_WEBPKI_INVALID = "sts-webpki-invalid"

MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 §3.3 suggests 64 KiB.
POLICY_PATH = "/.well-known/mta-sts.txt"


@dataclass(frozen=True)
class MTASTSSettings:
    """How policies are fetched. Tests pass the trustme CA and the loopback server's port."""

    # PEM file of trusted CAs; None uses the system trust store (production).
    ca_bundle: str | None = None
    https_port: int = 443
    # Whole fetch (connect, TLS, headers, body); RFC 8461 §3.3 suggests one minute.
    timeout: float = 60.0
    # Networks the policy host may be in although not public (app/ssrf.py); tests allow loopback.
    allowed_networks: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, delivery: Delivery) -> MTASTSSettings:
        """From the `[delivery]` config section (its CA bundle, policy port and allowed networks)."""
        ca_bundle = str(delivery.ca_bundle) if delivery.ca_bundle is not None else None
        return cls(
            ca_bundle=ca_bundle,
            https_port=delivery.mtasts_https_port,
            allowed_networks=tuple(delivery.https_allowed_networks),
        )


class PolicyError(Exception):
    """A policy could not be fetched or is invalid; `result_type` is its RFC 8460 result type."""

    def __init__(self, result_type: str, detail: str) -> None:
        super().__init__(detail)
        self.result_type = result_type


@dataclass(frozen=True)
class RecordLookup:
    """The `_mta-sts` TXT lookup: the record's id, or why there is none usable.

    `absent` is True only when DNS said for sure that no MTA-STS record exists (not on errors).
    """

    record_id: str | None
    absent: bool = False
    error: str | None = None




# The TXT record (RFC 8461 §3.1).

_RECORD_START = re.compile(r"v=STSv1[ \t]*;")
_RECORD_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXTENSION_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")


def parse_record(text: str) -> str:
    """The `id` of a `v=STSv1; id=...` record; ValueError says what is wrong."""
    if not _RECORD_START.match(text):
        raise ValueError("does not start with v=STSv1;")
    fields = [f.strip(" \t") for f in text.split(";")[1:]]
    if fields and fields[-1] == "":
        fields.pop()  # a trailing separator is allowed
    record_id: str | None = None
    for field in fields:
        name, eq, value = field.partition("=")
        if name == "id" and eq and _RECORD_ID.fullmatch(value):
            if record_id is not None:
                raise ValueError("more than one id field")
            record_id = value
        elif name == "id":
            raise ValueError(f"invalid id {value!r} (1 to 32 letters and digits)")
        elif not (eq and _EXTENSION_NAME.fullmatch(name) and _EXTENSION_VALUE.fullmatch(value)):
            raise ValueError(f"invalid field {field!r}")
    if record_id is None:
        raise ValueError("no id field")
    return record_id


async def lookup_record(resolver: Resolver, domain: str) -> RecordLookup:
    """Exactly one valid MTA-STS record must exist; otherwise the domain has no live policy (§3.1)."""
    try:
        answer = await resolver.txt(f"_mta-sts.{domain}")
    except DNSError as e:
        return RecordLookup(None, error=f"DNS lookup of _mta-sts.{domain}: {e}")
    candidates = [text for text in answer.records if _RECORD_START.match(text)]
    if not candidates:
        return RecordLookup(None, absent=True)
    if len(candidates) > 1:
        return RecordLookup(None, error=f"_mta-sts.{domain} has {len(candidates)} MTA-STS records")
    try:
        return RecordLookup(parse_record(candidates[0]))
    except ValueError as e:
        return RecordLookup(None, error=f"_mta-sts.{domain} record {candidates[0]!r}: {e}")


# Fetching over HTTPS (RFC 8461 §3.3).


async def fetch_policy_text(domain: str, resolver: Resolver, settings: MTASTSSettings) -> str:
    """The text of `https://mta-sts.<domain>/.well-known/mta-sts.txt`; raises PolicyError.

    The host name is resolved with our resolver and the connection made to its address, with SNI
    and certificate verification for `mta-sts.<domain>`. No redirects, no proxies, no caching. The
    recipient domain chooses the host, so only its public addresses are used (app/ssrf.py).
    """
    host = f"mta-sts.{domain}"
    try:
        addresses = await resolver.ips(host)
    except DNSError as e:
        raise PolicyError(STS_POLICY_FETCH_ERROR, f"resolving {host}: {e}") from None
    if not addresses:
        raise PolicyError(STS_POLICY_FETCH_ERROR, f"{host} has no address")
    try:
        addresses = allowed_addresses(host, addresses, settings.allowed_networks)
    except AddressRefused as e:
        raise PolicyError(STS_POLICY_FETCH_ERROR, str(e)) from None
    try:
        async with asyncio.timeout(settings.timeout):
            body = await _fetch_first_reachable(host, addresses, settings)
    except TimeoutError:
        raise PolicyError(
            STS_POLICY_FETCH_ERROR, f"{host}: no complete policy within {settings.timeout} s"
        ) from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(STS_POLICY_INVALID, f"{host}: policy is not UTF-8 text") from None


async def _fetch_first_reachable(host: str, addresses: Sequence[str], settings: MTASTSSettings) -> bytes:
    context = ssl.create_default_context(cafile=settings.ca_bundle)
    async with httpx.AsyncClient(
        verify=context, follow_redirects=False, trust_env=False, timeout=settings.timeout
    ) as client:
        last_error = ""
        for address in addresses:
            try:
                return await _fetch_from(client, host, address, settings.https_port)
            except httpx.RequestError as e:
                if _certificate_error(e) is not None:
                    raise PolicyError(
                        STS_WEBPKI_INVALID, f"{host} ({address}): {_certificate_error(e)}"
                    ) from None
                last_error = f"{host} ({address}): {type(e).__name__}: {e}"
        raise PolicyError(STS_POLICY_FETCH_ERROR, last_error or f"{host}: no address reachable")


async def _fetch_from(client: httpx.AsyncClient, host: str, address: str, port: int) -> bytes:
    literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    url = f"https://{literal}:{port}{POLICY_PATH}"
    headers = {"Host": host if port == 443 else f"{host}:{port}", "Accept": "text/plain"}
    async with client.stream("GET", url, headers=headers, extensions={"sni_hostname": host}) as response:
        _check_response(host, response)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_POLICY_SIZE:
                raise PolicyError(
                    STS_POLICY_FETCH_ERROR, f"{host}: policy larger than {MAX_POLICY_SIZE} bytes"
                )
        return bytes(body)


def _check_response(host: str, response: httpx.Response) -> None:
    if response.is_redirect:
        where = response.headers.get("location", "?")
        raise PolicyError(
            STS_POLICY_FETCH_ERROR, f"{host}: HTTP {response.status_code} redirect to {where} not followed"
        )
    if response.status_code != 200:
        raise PolicyError(STS_POLICY_FETCH_ERROR, f"{host}: HTTP status {response.status_code}")
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "text/plain":
        raise PolicyError(
            STS_POLICY_INVALID, f"{host}: content type {media_type or 'missing'}, not text/plain"
        )
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_POLICY_SIZE:
        raise PolicyError(
            STS_POLICY_FETCH_ERROR, f"{host}: policy of {length} bytes exceeds {MAX_POLICY_SIZE}"
        )


def _certificate_error(error: BaseException) -> str | None:
    """The certificate verification failure inside an httpx error, if that is what it was."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None
