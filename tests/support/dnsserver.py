"""A real DNS server on loopback for tests: UDP and TCP, records given per test, AD bit per zone.

It answers authoritatively from an in-memory table. Names can be made to time out (no answer at all)
or to fail with SERVFAIL, so temporary-error paths are tested against real sockets.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections import defaultdict

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def _norm(name: str) -> str:
    return name.lower().rstrip(".") + "."


class DNSTestServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._records: dict[tuple[str, int], list[dns.rdata.Rdata]] = defaultdict(list)
        self._names: set[str] = set()
        self.authentic_zones: set[str] = set()
        self.timeout_names: set[str] = set()
        self.servfail_names: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._udp, self._tcp = _bind_pair(host, port)
        self.port = self._udp.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-test-server", daemon=True)

    # Test-facing API.

    def add(self, name: str, rdtype: str, *values: str) -> None:
        """Add records, e.g. add("example.org", "MX", "10 mx.example.org.")."""
        qname = _norm(name)
        kind = dns.rdatatype.from_text(rdtype)
        with self._lock:
            for value in values:
                rdata = dns.rdata.from_text(
                    dns.rdataclass.IN, kind, value, origin=dns.name.root, relativize=False
                )
                self._records[(qname, kind)].append(rdata)
            self._names.add(qname)

    def txt(self, name: str, *values: str) -> None:
        """Add TXT records; long values are split into 255-octet character-strings."""
        for value in values:
            raw = value.encode()
            chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
            quoted = " ".join(
                '"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks
            )
            self.add(name, "TXT", quoted)

    def authentic(self, zone: str) -> None:
        """Set the AD bit on answers for names at or under `zone`."""
        self.authentic_zones.add(_norm(zone))

    def timeout(self, name: str) -> None:
        self.timeout_names.add(_norm(name))

    def servfail(self, name: str) -> None:
        self.servfail_names.add(_norm(name))

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._names.clear()
            self.authentic_zones.clear()
            self.timeout_names.clear()
            self.servfail_names.clear()
            self.queries.clear()

    def start(self) -> DNSTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._udp.close()
        self._tcp.close()

    # Serving.

    def _serve(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._udp, self._tcp], [], [], 0.1)
            for sock in readable:
                if sock is self._udp:
                    data, addr = self._udp.recvfrom(65535)
                    reply = self._answer(data, max_size=1232)
                    if reply is not None:
                        self._udp.sendto(reply, addr)
                else:
                    conn, _ = self._tcp.accept()
                    threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with conn:
                while True:
                    head = conn.recv(2)
                    if len(head) < 2:
                        return
                    (length,) = struct.unpack("!H", head)
                    data = b""
                    while len(data) < length:
                        chunk = conn.recv(length - len(data))
                        if not chunk:
                            return
                        data += chunk
                    reply = self._answer(data, max_size=65535)
                    if reply is None:
                        return
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return

    def _answer(self, data: bytes, max_size: int) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        question = query.question[0]
        qname = question.name.to_text().lower()
        self.queries.append((qname.rstrip("."), dns.rdatatype.to_text(question.rdtype)))
        if qname in self.timeout_names:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if qname in self.servfail_names:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire(max_size=65535)
        with self._lock:
            self._fill(response, qname, question.rdtype)
        if any(qname == z or qname.endswith("." + z) for z in self.authentic_zones):
            response.flags |= dns.flags.AD
        # to_wire() alone would refuse answers over the client's EDNS size; we truncate ourselves.
        wire = response.to_wire(max_size=65535)
        if len(wire) > max_size:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            wire = response.to_wire()
        return wire

    def _fill(self, response: dns.message.Message, qname: str, rdtype: int) -> None:
        name = qname
        for _ in range(8):  # follow CNAMEs inside our own data
            records = self._records.get((name, rdtype))
            cname = self._records.get((name, dns.rdatatype.CNAME))
            if records:
                response.answer.append(dns.rrset.from_rdata_list(name, 60, records))
                return
            if cname and rdtype != dns.rdatatype.CNAME:
                response.answer.append(dns.rrset.from_rdata_list(name, 60, cname))
                name = cname[0].target.to_text().lower()
                continue
            break
        if name not in self._names and not any(n.endswith("." + name) for n in self._names):
            response.set_rcode(dns.rcode.NXDOMAIN)


def _bind_pair(host: str, port: int, tries: int = 20) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket on `port`, or on one free port for 0. The UDP port the kernel
    picks may be taken for TCP by another test at the same moment: then a new pair is tried."""
    for _ in range(tries if port == 0 else 1):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(64)
        return udp, tcp
    raise OSError(f"no port free for both UDP and TCP on {host} (port {port or 'any'})")
