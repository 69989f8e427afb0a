"""Client IP addresses as every check compares them. An IPv4 client that reached a dual-stack (IPv6)
socket shows up as `::ffff:192.0.2.1`; it is the IPv4 address it maps (RFC 4291 2.5.5.2), and is
checked (SPF, RFC 7208 5), counted (rate limits, login throttling), grouped (reputation) and
reported (DMARC) as that address, never as a second, IPv6 identity of the same client."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmapped(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped IPv6 address stands for; any other address as it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(text: str) -> IPAddress | None:
    """A peer's address text as an address (unmapped); None when it is not one (a Unix socket)."""
    try:
        return unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None
