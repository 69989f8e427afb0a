"""From a message or a file to a parsed report: unpack (app/inreports/unpack.py), then parse what it is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.inreports import dmarc, tls
from app.inreports.errors import Kind, ReportError, reason_for
from app.inreports.unpack import Payload, from_file, from_message

Report = dmarc.AggregateReport | tls.TLSReport


@dataclass(frozen=True)
class ReportHead:
    """What the verdict step checks of a report (SPEC R6.2): the policy domains it is about (in
    lowercase A-labels) and when its range ends."""

    kind: Kind
    domains: tuple[str, ...]
    end: datetime


def parse(payload: Payload) -> Report:
    return tls.parse(payload.data) if payload.kind == "tls" else dmarc.parse(payload.data)


def read_payload(raw: bytes, expect: Kind) -> Payload:
    """The report document of a message sent to an address receiving `expect` reports; a report of
    the other kind is refused there with the address's reason."""
    payload = from_message(raw, expect)
    if payload.kind != expect:
        raise ReportError(reason_for(expect), "report of the other kind for this address")
    return payload


def read_message(raw: bytes, expect: Kind | None = None) -> Report:
    """The report a message carries; `expect`: what its recipient address receives (R6.3 reasons)."""
    return parse(from_message(raw, expect))


def read_head(raw: bytes, expect: Kind) -> ReportHead:
    """The head of the report a message carries. A DMARC report's records are not read (the part that
    grows); a TLS report is parsed whole, as json's C parser reads it faster than a head could be cut."""
    payload = read_payload(raw, expect)
    if payload.kind == "tls":
        report = tls.parse(payload.data)
        return ReportHead("tls", tuple(p.policy_domain for p in report.policies), report.end)
    head = dmarc.parse_head(payload.data)
    return ReportHead("dmarc", (head.policy.domain,), head.metadata.end)


def read_file(data: bytes) -> Report:
    """A report file as `postwarden reports import` gets it: XML, JSON, gzip, zip or a whole message."""
    return parse(from_file(data))
