"""Where mail for a recipient domain goes: a configured smarthost route, or the domain's MX hosts.

Direct delivery (RFC 5321 §5.1): MX hosts in preference order, equal preferences shuffled; no MX
records means the domain itself is the host (implicit MX); a null MX (RFC 7505) and a domain that
does not exist are permanent failures; DNS trouble is temporary. The destination port is a setting
(25 by default) so tests reach loopback peers through the real MX/MTA-STS/DANE path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import groupby

from app.config import Delivery, Route
from app.dns import MX, DNSPermanentError, DNSTemporaryError, Resolver, is_ip_address
from app.queue.smtpclient import DeliveryError
from app.queue.tlspolicy import TLSSettings


@dataclass(frozen=True)
class Hop:
    """A host to try. `tls` is fixed for a smarthost; None: the destination's policies decide."""

    host: str
    port: int
    tls: TLSSettings | None = None


@dataclass(frozen=True)
class Destination:
    domain: str
    hops: tuple[Hop, ...]
    # Whether the MX answer was DNSSEC-authenticated: DANE applies only then (RFC 7672 §2.2).
    mx_authentic: bool = False
    implicit_mx: bool = False


def configured_route(delivery: Delivery, domain: str) -> Route | None:
    """The route listing the domain, else the first route for all domains, else None (direct)."""
    listed = next((r for r in delivery.routes if domain in r.domains), None)
    return listed or next((r for r in delivery.routes if not r.domains), None)


async def resolve_destination(delivery: Delivery, resolver: Resolver, domain: str) -> Destination:
    """The hops for `domain`; raises DeliveryError when there is nowhere to deliver."""
    route = configured_route(delivery, domain)
    if route is not None:
        tls = TLSSettings(
            starttls_required=route.starttls == "required",
            verify_pkix=route.verify_pkix,
            verify_dane=False,
            ignore_verification_errors=False,
            server_name=route.host,
        )
        return Destination(domain, (Hop(route.host, route.port, tls),))
    try:
        answer = await resolver.mx(domain)
    except DNSTemporaryError as e:
        raise DeliveryError(f"MX lookup for {domain}: {e}", permanent=False, status="4.4.3") from e
    except DNSPermanentError as e:
        raise DeliveryError(f"MX lookup for {domain}: {e}", permanent=True, status="5.1.2") from e
    records: list[MX] = answer.records
    if any(mx.host in (".", "") for mx in records):
        raise DeliveryError(f"{domain} accepts no mail (null MX, RFC 7505)", permanent=True, status="5.1.10")
    if records:
        hosts = _preference_order(records)
        return Destination(domain, tuple(Hop(h, delivery.smtp_port) for h in hosts), answer.authentic)
    if answer.nxdomain:
        raise DeliveryError(f"domain {domain} does not exist", permanent=True, status="5.1.2")
    return Destination(domain, (Hop(domain, delivery.smtp_port),), answer.authentic, implicit_mx=True)


def _preference_order(records: list[MX]) -> list[str]:
    """Hosts by preference; hosts of equal preference in random order to spread load (§5.1)."""
    hosts: list[str] = []
    for _, group in groupby(sorted(records, key=lambda r: r.preference), key=lambda r: r.preference):
        same = [mx.host for mx in group]
        random.shuffle(same)
        hosts += [h for h in same if h not in hosts]
    return hosts


async def host_addresses(resolver: Resolver, host: str) -> list[str]:
    """The IPs to connect to for a host name (or the literal itself); raises DeliveryError on DNS trouble."""
    if is_ip_address(host):
        return [host]
    try:
        return await resolver.ips(host)
    except DNSTemporaryError as e:
        raise DeliveryError(f"address lookup for {host}: {e}", permanent=False, status="4.4.3") from e
    except DNSPermanentError as e:
        raise DeliveryError(f"address lookup for {host}: {e}", permanent=False, status="4.4.4") from e
