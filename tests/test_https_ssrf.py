"""HTTPS requests to hosts other parties name (https: TLS-RPT rua, MTA-STS policy hosts): only public
addresses, a bounded time, no body read (issue 8, item 5: server-side request forgery).

Refusals are proven against real listening sockets on loopback: a connection the client made would
wait in the listener's accept queue, so an empty queue means none was made.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trustme

from app.config import ConfigError, load_config
from app.dns import Resolver
from app.queue.mtasts import fetch_policy
from app.queue.mtastsfetch import STS_POLICY_FETCH_ERROR, MTASTSSettings, PolicyError
from app.ssrf import is_own_address, refusal
from app.tlsreports.https import PostError, post_report
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import LOOPBACK_NETWORKS

RUA_HOST = "reports.example.net"


@contextmanager
def listener(address: str) -> Iterator[socket.socket]:
    """A listening socket nobody accepts from: its queue shows whether anyone connected."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


async def post(url: str, resolver: Resolver, ca_file: Path, timeout: float = 5.0) -> int:
    return await post_report(url, b"report", resolver, ca_bundle=ca_file, timeout=timeout)


@pytest.mark.parametrize(
    ("listen", "host", "record"),
    [
        ("127.0.0.1", "127.0.0.1", None),
        ("::1", "[::1]", None),
        ("127.0.0.1", "[::ffff:127.0.0.1]", None),
        ("127.0.0.1", RUA_HOST, ("A", "127.0.0.1")),
        ("::1", RUA_HOST, ("AAAA", "::1")),
    ],
    ids=["ipv4-literal", "ipv6-literal", "mapped-literal", "name-to-127.0.0.1", "name-to-::1"],
)
async def test_rua_on_loopback_is_refused_without_connecting(
    listen: str,
    host: str,
    record: tuple[str, str] | None,
    dns: DNSTestServer,
    resolver: Resolver,
    https_ca_file: Path,
) -> None:
    if record is not None:
        dns.add(RUA_HOST, *record)
    with listener(listen) as sock:
        url = f"https://{host}:{sock.getsockname()[1]}/tlsrpt"
        with pytest.raises(PostError, match=r"refused: no public address, only .*loopback\)$"):
            await post(url, resolver, https_ca_file)
        assert not connected(sock)
        # With loopback allowed (as the tests' configs do) the same request does connect.
        with pytest.raises(PostError, match=r"(ReadTimeout|not done within)"):
            await post_report(
                url, b"r", resolver, ca_bundle=https_ca_file, timeout=0.5, allowed_networks=LOOPBACK_NETWORKS
            )
        assert connected(sock)


@pytest.mark.parametrize(
    ("rdtype", "address", "reason"),
    [
        ("A", "10.1.2.3", "private or special-use"),
        ("A", "192.168.1.1", "private or special-use"),
        ("A", "172.16.0.1", "private or special-use"),
        ("A", "169.254.169.254", "link-local"),  # the cloud metadata service
        ("A", "100.64.0.1", "shared (CGNAT)"),
        ("A", "0.0.0.0", "unspecified"),
        ("A", "224.0.0.1", "multicast"),
        ("A", "240.0.0.1", "private or special-use"),
        ("AAAA", "fc00::1", "private or special-use"),
        ("AAAA", "fe80::1", "link-local"),
        ("AAAA", "::", "unspecified"),
        ("AAAA", "ff02::1", "multicast"),
        ("AAAA", "64:ff9b::a01:203", "embeds 10.1.2.3, private or special-use"),  # NAT64
        ("AAAA", "2002:a9fe:a9fe::1", "embeds 169.254.169.254, link-local"),  # 6to4
    ],
)
async def test_rua_resolving_to_a_non_public_address_is_refused(
    rdtype: str, address: str, reason: str, dns: DNSTestServer, resolver: Resolver, https_ca_file: Path
) -> None:
    dns.add(RUA_HOST, rdtype, address)
    with pytest.raises(PostError) as raised:
        await post(f"https://{RUA_HOST}/tlsrpt", resolver, https_ca_file)
    shown = str(ipaddress.ip_address(address))
    assert str(raised.value) == (
        f"POST https://{RUA_HOST}/tlsrpt: {RUA_HOST} refused: no public address, only {shown} ({reason})"
    )


async def test_only_the_allowed_addresses_of_a_host_are_used(
    dns: DNSTestServer, resolver: Resolver, https_ca_file: Path
) -> None:
    # 10.1.2.3 comes first; connecting to it would hang until the timeout (or fail), not be refused.
    dns.add(RUA_HOST, "A", "10.1.2.3")
    dns.add(RUA_HOST, "A", "127.0.0.1")
    with listener("127.0.0.1") as sock:
        url = f"https://{RUA_HOST}:{sock.getsockname()[1]}/tlsrpt"
        with pytest.raises(PostError, match=r"(ReadTimeout|not done within)"):
            await post_report(
                url, b"r", resolver, ca_bundle=https_ca_file, timeout=1, allowed_networks=LOOPBACK_NETWORKS
            )
        assert connected(sock)


def test_refusal_reasons_and_own_addresses() -> None:
    test_net = ipaddress.ip_address("192.0.2.1")
    assert refusal(test_net, []) == "private or special-use"
    assert refusal(test_net, [ipaddress.ip_network("192.0.2.0/24")]) is None
    assert refusal(ipaddress.ip_address("::ffff:10.0.0.1"), []) == "embeds 10.0.0.1, private or special-use"
    assert refusal(ipaddress.ip_address("::ffff:10.0.0.1"), [ipaddress.ip_network("10.0.0.0/8")]) is None
    assert refusal(ipaddress.ip_address("8.8.8.8"), []) is None
    assert refusal(ipaddress.ip_address("2001:4860:4860::8888"), []) is None
    # Every address of this host's interfaces is its own (listed here by the kernel's routes).
    for address in _interface_addresses():
        assert is_own_address(address), address
    assert not is_own_address(ipaddress.ip_address("8.8.8.8"))


def _interface_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host's addresses as its interfaces list them (found without the UDP probe under test)."""
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    with open("/proc/net/if_inet6") as f:
        for line in f:
            addresses.append(ipaddress.IPv6Address(int(line.split()[0], 16)))
    addresses.append(ipaddress.IPv4Address("127.0.0.1"))
    for name in (n for _, n in socket.if_nameindex()):
        address = _ipv4_of(name)
        if address is not None:
            addresses.append(address)
    return [a for a in addresses if not a.is_link_local]  # link-local ones need a scope to route


SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def _ipv4_of(interface: str) -> ipaddress.IPv4Address | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", interface.encode()[:15]))
        except OSError:
            return None  # no IPv4 address
    return ipaddress.IPv4Address(packed[20:24])


# The MTA-STS policy host: the same refusal.


async def test_mtasts_policy_host_on_a_non_public_address_is_refused_without_connecting(
    dns: DNSTestServer, resolver: Resolver, https_ca_file: Path
) -> None:
    dns.add("mta-sts.example.net", "A", "127.0.0.1")
    with listener("127.0.0.1") as sock:
        settings = MTASTSSettings(ca_bundle=str(https_ca_file), https_port=sock.getsockname()[1], timeout=2)
        with pytest.raises(PolicyError) as raised:
            await fetch_policy("example.net", resolver, settings)
        assert not connected(sock)
    assert raised.value.result_type == STS_POLICY_FETCH_ERROR
    assert str(raised.value) == "mta-sts.example.net refused: no public address, only 127.0.0.1 (loopback)"
    dns.add("mta-sts.example.org", "A", "169.254.169.254")
    with pytest.raises(PolicyError, match=r"only 169\.254\.169\.254 \(link-local\)"):
        await fetch_policy("example.org", resolver, settings)


# Hostile receivers: the body is never read, the whole request is bounded in time.


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tls_server(ca: trustme.CA, handler: Handler) -> AsyncIterator[int]:
    """A raw HTTPS server on 127.0.0.1 (certificate for RUA_HOST) running `handler` per connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(RUA_HOST).configure_cert(context)
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [
        line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    ]
    await reader.readexactly(int(lengths[0]))


async def test_an_endless_response_body_is_not_read(
    dns: DNSTestServer, resolver: Resolver, https_ca: trustme.CA, https_ca_file: Path
) -> None:
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        chunk = b"x" * 65536
        try:
            while True:  # until the client hangs up
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    dns.add(RUA_HOST, "A", "127.0.0.1")
    async with tls_server(https_ca, endless) as port:
        start = time.monotonic()
        async with asyncio.timeout(10):  # the old client read the body forever
            status = await post_report(
                f"https://{RUA_HOST}:{port}/r",
                b"r",
                resolver,
                ca_bundle=https_ca_file,
                timeout=5,
                allowed_networks=LOOPBACK_NETWORKS,
            )
        assert status == 200
        assert time.monotonic() - start < 5
    # What the kernel buffers took before the client closed, not the stream the server would send.
    assert sent < 16 * 1024 * 1024


async def test_a_trickling_receiver_is_cut_at_the_deadline(
    dns: DNSTestServer, resolver: Resolver, https_ca: trustme.CA, https_ca_file: Path
) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        try:
            # One byte every 50 ms: no read ever waits long enough for a per-read timeout.
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    dns.add(RUA_HOST, "A", "127.0.0.1")
    async with tls_server(https_ca, trickle) as port:
        start = time.monotonic()
        with pytest.raises(PostError, match=r"not done within 1 s"):
            async with asyncio.timeout(10):
                await post_report(
                    f"https://{RUA_HOST}:{port}/r",
                    b"r",
                    resolver,
                    ca_bundle=https_ca_file,
                    timeout=1,
                    allowed_networks=LOOPBACK_NETWORKS,
                )
        assert time.monotonic() - start < 1.5


def test_allowed_networks_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    path = write_config(tmp_path, '\n[delivery]\nhttps_allowed_networks = ["127.0.0.0/8", "10.0.0.0/33"]\n')
    with pytest.raises(
        ConfigError, match=r"https_allowed_networks\[1\]'.*'10\.0\.0\.0/33' is not an IP address or network"
    ):
        load_config(path)
    path = write_config(tmp_path, '\n[delivery]\nhttps_allowed_networks = ["127.0.0.0/8", "::1"]\n')
    assert MTASTSSettings.from_config(load_config(path).delivery).allowed_networks == LOOPBACK_NETWORKS
