"""The Authentication-Results header field (RFC 8601) that records our SPF, DKIM and DMARC results."""

from __future__ import annotations

import re

from app.auth.types import DKIMResult, DMARCResult, SPFResult

LINE_LIMIT = 78  # RFC 5322 2.1.1: lines SHOULD stay within 78 characters
REASON_LIMIT = 100
AUTHSERV_ID_LIMIT = 255  # our host name, normally: the longest domain name
# RFC 2045 token: printable ASCII except SPACE and the tspecials.
_TOKEN = re.compile(r"^[!#$%&\'*+\-.0-9A-Z^_`a-z{|}~]+$")


def authentication_results(
    authserv_id: str,
    *,
    spf_mailfrom: SPFResult,
    spf_helo: SPFResult,
    dkim: list[DKIMResult],
    dmarc: DMARCResult,
) -> str:
    """The complete header field, folded, ending in CRLF, ready to prepend to the message."""
    resinfos = [
        _resinfo("spf", spf_mailfrom.status, spf_mailfrom.reason, [("smtp.mailfrom", spf_mailfrom.domain)]),
        _resinfo("spf", spf_helo.status, spf_helo.reason, [("smtp.helo", spf_helo.domain)]),
        *(_dkim(result) for result in dkim),
        *([] if dkim else [["dkim=none"]]),
        _dmarc(dmarc),
    ]
    lines = [f"Authentication-Results: {value(_printable(authserv_id, AUTHSERV_ID_LIMIT))};"]
    for index, units in enumerate(resinfos):
        end = ";" if index < len(resinfos) - 1 else ""
        lines += _fold(units, end)
    return "\r\n".join(lines) + "\r\n"


def value(text: str) -> str:
    """A property or reason value: a token as it is, anything else as a quoted-string."""
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _resinfo(method: str, result: str, reason: str, properties: list[tuple[str, str]]) -> list[str]:
    # A value with nothing printable is left out: `reason=""` says nothing (and trips some parsers).
    reason = _printable(reason) if result != "pass" else ""
    units = [f"{method}={result}"] + ([f"reason={value(reason)}"] if reason else [])
    values = [(name, _printable(text)) for name, text in properties]
    return units + [f"{name}={value(text)}" for name, text in values if text]


def _dkim(result: DKIMResult) -> list[str]:
    properties = [("header.d", result.domain), ("header.s", result.selector), ("header.a", result.algorithm)]
    return _resinfo("dkim", result.status, result.reason, properties)


def _dmarc(result: DMARCResult) -> list[str]:
    units = _resinfo("dmarc", result.status, result.reason, [("header.from", result.from_domain)])
    if result.record is not None and result.status in ("pass", "fail"):
        # A comment for people reading the header: the published policy and what it asks for here.
        policy = (
            f"(p={result.record.p or 'none'} dis={result.disposition}{' testing' if result.testing else ''})"
        )
        units.insert(1, policy)
    return units


def _printable(text: str, limit: int = REASON_LIMIT) -> str:
    """Printable ASCII for the field: anything else (CR, LF, controls, non-ASCII) as "?", shortened to
    `limit` characters."""
    text = re.sub(r"[^\x20-\x7e]+", "?", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fold(units: list[str], end: str) -> list[str]:
    """One resinfo on continuation lines, breaking between its units where a line would grow too long."""
    lines = ["\t" + units[0]]
    for unit in units[1:]:
        if len(lines[-1]) + 1 + len(unit) + len(end) > LINE_LIMIT:
            lines.append("\t  " + unit)
        else:
            lines[-1] += " " + unit
    lines[-1] += end
    return lines
