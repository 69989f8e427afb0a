"""Which addresses an HTTPS request to an attacker-chosen host may go to (server-side request forgery).

An `https:` TLS-RPT rua and the MTA-STS policy host `mta-sts.<recipient domain>` are named by other
parties, who could point them at our loopback, our private network or this host itself to make us
send requests there. Callers resolve the host with our resolver, keep only the addresses this module
allows and connect to those addresses themselves (so a second lookup cannot switch them: no DNS
rebinding). Refused: loopback, private and other special-use addresses, link-local, unspecified,
multicast, reserved, shared (CGNAT 100.64.0.0/10), IPv6 forms embedding such an IPv4 address, and
this host's own addresses. `allowed_networks` (config `delivery.https_allowed_networks`) lifts the
refusal for chosen networks, e.g. loopback in tests.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

from app.ipaddr import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598; Python < 3.12 has no flag for it
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix

# Checked in this order, so a loopback address is called loopback rather than private.
_SPECIAL: list[tuple[Callable[[IPAddress], bool], str]] = [
    (lambda ip: ip.is_unspecified, "unspecified"),
    (lambda ip: ip.is_loopback, "loopback"),
    (lambda ip: ip.is_link_local, "link-local"),
    (lambda ip: ip.is_multicast, "multicast"),
    (lambda ip: ip.version == 4 and ip in _SHARED, "shared (CGNAT)"),
    (lambda ip: ip.is_private, "private or special-use"),
    (lambda ip: ip.is_reserved, "reserved"),
    (lambda ip: not ip.is_global, "not globally routable"),
]


class AddressRefused(Exception):
    """None of a host's addresses may be connected to; the message names them and why."""


def allowed_addresses(host: str, addresses: Sequence[str], allowed_networks: Sequence[str]) -> list[str]:
    """The addresses of `host` a request may go to, in order; AddressRefused when none is left."""
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    kept, refused = [], []
    for address in addresses:
        reason = refusal(ipaddress.ip_address(address), networks)
        if reason is None:
            kept.append(address)
        else:
            refused.append(f"{address} ({reason})")
    if not kept:
        raise AddressRefused(f"{host} refused: no public address, only {', '.join(refused)}")
    return kept


def refusal(ip: IPAddress, allowed_networks: Sequence[IPNetwork]) -> str | None:
    """Why a request must not go to `ip`, or None when it may."""
    embedded = _embedded_ipv4(ip)
    if any(ip in n or (embedded is not None and embedded in n) for n in allowed_networks):
        return None
    if embedded is not None:
        # The connection really goes to the IPv4 address (mapped, 6to4 or NAT64): judge that one.
        inner = refusal(embedded, ())
        return f"embeds {embedded}, {inner}" if inner else None
    for test, name in _SPECIAL:
        if test(ip):
            return name
    if is_own_address(ip):
        return "an address of this host"
    return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_own_address(ip: IPAddress) -> bool:
    """Whether `ip` is one of this host's addresses: the kernel routes it to itself, from itself.

    A UDP connect sends nothing; it only picks the route and the source address. For a local
    address the route is the loopback one and the source is the address itself. This needs no list
    of interfaces, and also knows addresses added after we started.
    """
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(ip), 9))
        except OSError:
            return False  # no route: not ours, and unreachable anyway
        return ipaddress.ip_address(probe.getsockname()[0]) == ip
