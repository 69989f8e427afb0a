"""app/ipaddr.py: an IPv4 client seen through a dual-stack socket is its IPv4 address everywhere."""

from __future__ import annotations

import ipaddress

import pytest

from app.config import LoginThrottle
from app.dmarcreports.evaluation import _source_ip
from app.ipaddr import client_address, unmapped
from app.store.signals import ip_networks
from app.throttle import address_range


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::ffff:192.0.2.1", ipaddress.IPv4Address("192.0.2.1")),
        ("192.0.2.1", ipaddress.IPv4Address("192.0.2.1")),
        ("2001:db8::1", ipaddress.IPv6Address("2001:db8::1")),
        ("::192.0.2.1", ipaddress.IPv6Address("::c000:201")),  # IPv4-compatible (deprecated): not mapped
        ("/run/postwarden.sock", None),
        ("", None),
    ],
)
def test_client_address(text: str, expected: object) -> None:
    assert client_address(text) == expected


def test_the_mapped_form_gets_no_second_identity() -> None:
    mapped, plain = "::ffff:198.51.100.7", "198.51.100.7"
    assert unmapped(ipaddress.ip_address(mapped)) == ipaddress.ip_address(plain)
    assert ip_networks(mapped) == ip_networks(plain) != []
    assert (
        address_range(mapped, LoginThrottle()) == address_range(plain, LoginThrottle()) == "198.51.100.0/24"
    )
    assert _source_ip(mapped) == plain
