"""From a message or a file to a parsed report: unpack (app/inreports/unpack.py), then parse what it is."""

from __future__ import annotations

from app.inreports import dmarc, tls
from app.inreports.errors import Kind
from app.inreports.unpack import Payload, from_file, from_message

Report = dmarc.AggregateReport | tls.TLSReport


def parse(payload: Payload) -> Report:
    return tls.parse(payload.data) if payload.kind == "tls" else dmarc.parse(payload.data)


def read_message(raw: bytes, expect: Kind | None = None) -> Report:
    """The report a message carries; `expect`: what its recipient address receives (R6.3 reasons)."""
    return parse(from_message(raw, expect))


def read_file(data: bytes) -> Report:
    """A report file as `postwarden reports import` gets it: XML, JSON, gzip, zip or a whole message."""
    return parse(from_file(data))
