"""A real DNSSEC test bed on loopback: zones signed with ldns tools, served by nsd, validated by unbound.

Follows ../shared/notes/dnssec-testbed.md. Zones are added before `start()`; each signed zone gets
its own keys and its KSK becomes an unbound trust anchor, so answers from it carry the AD bit exactly
as in production. A zone can be tampered with after signing (a record changed without re-signing:
unbound answers SERVFAIL) or served unsigned (answers without AD). nsd and unbound run in the
foreground as our own child processes and are stopped by pid.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

TOOLS = ("nsd", "unbound", "ldns-keygen", "ldns-signzone")
START_DEADLINE = 15.0


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (DNS serves both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the DNSSEC test bed")


@dataclass
class Zone:
    name: str
    records: list[str]
    signed: bool = True
    # Edits the signed zone text before nsd loads it (to break a signature).
    tamper: Callable[[str], str] | None = None


class DNSSECTestbed:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.zones: list[Zone] = []
        self.nsd_port = free_port()
        self.port = free_port()  # unbound, the validating resolver tests talk to
        self._processes: list[subprocess.Popen[bytes]] = []

    def add_zone(self, zone: Zone) -> None:
        self.zones.append(zone)

    def start(self) -> DNSSECTestbed:
        anchors = [self._prepare(zone) for zone in self.zones]
        self._write_nsd_conf()
        self._write_unbound_conf([a for a in anchors if a is not None])
        self._spawn(["nsd", "-d", "-c", str(self.directory / "nsd.conf")], self.nsd_port, self.zones[0].name)
        self._spawn(
            ["unbound", "-d", "-c", str(self.directory / "unbound.conf")], self.port, self.zones[0].name
        )
        return self

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self._processes.clear()

    # Zones and keys.

    def _zone_text(self, zone: Zone) -> str:
        origin = zone.name + "."
        head = [
            f"$ORIGIN {origin}",
            "$TTL 300",
            f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 300",
            f"@ IN NS ns.{origin}",
            "ns IN A 127.0.0.1",
        ]
        return "\n".join(head + zone.records) + "\n"

    def _prepare(self, zone: Zone) -> Path | None:
        """Write (and sign) the zone file; the trust anchor file of a signed zone."""
        path = self.directory / f"{zone.name}.zone"
        path.write_text(self._zone_text(zone))
        if not zone.signed:
            path.rename(self.directory / f"{zone.name}.served")
            return None
        ksk = self._run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", zone.name])
        zsk = self._run(["ldns-keygen", "-a", "ECDSAP256SHA256", zone.name])
        self._run(["ldns-signzone", "-n", str(path), ksk, zsk])
        signed = (self.directory / f"{zone.name}.zone.signed").read_text()
        if zone.tamper is not None:
            tampered = zone.tamper(signed)
            assert tampered != signed, "tamper() changed nothing"
            signed = tampered
        (self.directory / f"{zone.name}.served").write_text(signed)
        return self.directory / f"{ksk}.key"

    def _run(self, command: list[str]) -> str:
        done = subprocess.run(
            command, cwd=self.directory, capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    # Servers.

    def _write_nsd_conf(self) -> None:
        d = self.directory
        lines = [
            "server:",
            f"  ip-address: 127.0.0.1@{self.nsd_port}",
            f'  zonesdir: "{d}"',
            f'  pidfile: "{d}/nsd.pid"',
            '  database: ""',
            '  username: ""',
            f'  xfrdfile: "{d}/xfrd.state"',
            f'  zonelistfile: "{d}/zone.list"',
            f'  logfile: "{d}/nsd.log"',
            "  server-count: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone in self.zones:
            lines += ["zone:", f"  name: {zone.name}", f"  zonefile: {zone.name}.served"]
        (d / "nsd.conf").write_text("\n".join(lines) + "\n")

    def _write_unbound_conf(self, anchors: list[Path]) -> None:
        d = self.directory
        (d / "ta.key").write_text("".join(a.read_text() for a in anchors))
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {self.port}",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{d}"',
            f'  pidfile: "{d}/unbound.pid"',
            f'  logfile: "{d}/unbound.log"',
            "  use-syslog: no",
            "  access-control: 127.0.0.0/8 allow",
            "  do-not-query-localhost: no",
            f'  trust-anchor-file: "{d}/ta.key"',
            '  module-config: "validator iterator"',
            # unbound answers .test itself by default (RFC 6761); let our zones through.
            '  local-zone: "test." nodefault',
            "remote-control:",
            "  control-enable: no",
        ]
        for zone in self.zones:
            lines += ["stub-zone:", f'  name: "{zone.name}"', f"  stub-addr: 127.0.0.1@{self.nsd_port}"]
        (d / "unbound.conf").write_text("\n".join(lines) + "\n")

    def _spawn(self, command: list[str], port: int, probe: str) -> None:
        log = (self.directory / f"{command[0]}.out").open("wb")
        process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
        self._processes.append(process)
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = (self.directory / f"{command[0]}.out").read_text(errors="replace")
                raise RuntimeError(f"{command[0]} exited with {process.returncode}: {output}")
            if _answers(port, probe):
                return
            time.sleep(0.05)  # polling for readiness, bounded by the deadline
        raise RuntimeError(f"{command[0]} did not answer on port {port} within {START_DEADLINE} s")


def _answers(port: int, name: str) -> bool:
    query = dns.message.make_query(name, "SOA")
    try:
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
    except (OSError, dns.exception.Timeout):
        return False
    return response.rcode() in (dns.rcode.NOERROR, dns.rcode.SERVFAIL, dns.rcode.NXDOMAIN)


def stub_resolver(port: int) -> dns.asyncresolver.Resolver:
    """A plain dnspython resolver at the test bed (for checks independent of app.dns)."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.use_edns(0, dns.flags.DO, 1232)
    return resolver
