"""SMTP TLS report JSON (RFC 8460 section 4) into dataclasses.

The document's size is bounded by app/inreports/unpack.py. Before json.loads builds anything, the brackets
in it are counted (a cheap upper bound on its arrays and objects, strings included), so neither a deep
nesting nor millions of tiny containers cost more than a fixed amount; json's own recursion limit is a
second guard. Then only the fields RFC 8460 defines are read: text is cut to fixed lengths, counts must be
non-negative integers in range, lists are bounded, unknown fields are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.auth.message import ascii_domain
from app.inreports.errors import TLS_UNPARSABLE, ReportError

MAX_CONTAINERS = 200_000  # arrays and objects in the document (counted as brackets)
MAX_POLICIES = 10_000
MAX_FAILURE_DETAILS = 10_000  # per policy
MAX_POLICY_STRINGS = 100  # lines of one policy, and MX hosts
MAX_TEXT = 256
MAX_LONG_TEXT = 1024  # policy lines, additional information, contact info
MAX_COUNT = 2**31 - 1
POLICY_TYPES = frozenset({"sts", "tlsa", "no-policy-found"})


@dataclass(frozen=True)
class FailureDetail:
    result_type: str
    failed_session_count: int
    sending_mta_ip: str = ""
    receiving_mx_hostname: str = ""
    receiving_mx_helo: str = ""
    receiving_ip: str = ""
    additional_information: str = ""
    failure_reason_code: str = ""


@dataclass(frozen=True)
class PolicyReport:
    policy_type: str
    policy_domain: str
    successful: int
    failed: int
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()  # RFC 8460 4.4 has one string; some reporters send a list
    failure_details: tuple[FailureDetail, ...] = ()


@dataclass(frozen=True)
class TLSReport:
    organization_name: str
    start: datetime
    end: datetime
    contact_info: str
    report_id: str
    policies: tuple[PolicyReport, ...]

    @property
    def sessions(self) -> tuple[int, int]:
        """(successful, failed) over all policies."""
        return sum(p.successful for p in self.policies), sum(p.failed for p in self.policies)


def parse(document: bytes) -> TLSReport:
    """The report in `document`; anything but a well-formed RFC 8460 report is a ReportError."""
    if document.count(b"[") + document.count(b"{") > MAX_CONTAINERS:
        raise ReportError(TLS_UNPARSABLE, "too many JSON arrays and objects")
    try:
        return _report(json.loads(document))
    except (ValueError, TypeError, KeyError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise ReportError(TLS_UNPARSABLE, "malformed TLS report") from error


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("object expected")
    return value


def _list(value: Any, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("array expected")
    if len(value) > limit:
        raise ReportError(TLS_UNPARSABLE, "too many entries")
    return value


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise TypeError("string expected")
    return value.strip()[:limit]


def _optional_text(entry: dict[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    return _text(entry[name], limit) if name in entry else ""


def _count(value: Any) -> int:
    # bool is an int in Python, and JSON true is not a count.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise ReportError(TLS_UNPARSABLE, "count out of range")
    return value


def _datetime(value: Any) -> datetime:
    """RFC 3339 date-time (RFC 8460 4.4); one without a zone offset is not one."""
    moment = datetime.fromisoformat(_text(value).replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError("date-time without offset")
    return moment.astimezone(UTC)


def _report(value: Any) -> TLSReport:
    document = _object(value)
    dates = _object(document["date-range"])
    start, end = _datetime(dates["start-datetime"]), _datetime(dates["end-datetime"])
    if end < start:
        raise ReportError(TLS_UNPARSABLE, "date range ends before it begins")
    return TLSReport(
        organization_name=_text(document["organization-name"]),
        start=start,
        end=end,
        contact_info=_text(document["contact-info"], MAX_LONG_TEXT),
        report_id=_text(document["report-id"]),
        policies=tuple(_policy(entry) for entry in _list(document["policies"], MAX_POLICIES)),
    )


def _policy(value: Any) -> PolicyReport:
    entry = _object(value)
    policy, summary = _object(entry["policy"]), _object(entry["summary"])
    policy_type = _text(policy["policy-type"])
    if policy_type not in POLICY_TYPES:
        raise ReportError(TLS_UNPARSABLE, "unknown policy type")
    lines = _list(policy.get("policy-string", []), MAX_POLICY_STRINGS)
    details = _list(entry.get("failure-details", []), MAX_FAILURE_DETAILS)
    return PolicyReport(
        policy_type=policy_type,
        policy_domain=_domain(policy["policy-domain"]),
        successful=_count(summary["total-successful-session-count"]),
        failed=_count(summary["total-failure-session-count"]),
        policy_string=tuple(_text(line, MAX_LONG_TEXT) for line in lines),
        mx_host=_mx_hosts(policy.get("mx-host", [])),
        failure_details=tuple(_failure(detail) for detail in details),
    )


def _mx_hosts(value: Any) -> tuple[str, ...]:
    hosts = [value] if isinstance(value, str) else _list(value, MAX_POLICY_STRINGS)
    return tuple(_text(host) for host in hosts)


def _domain(value: Any) -> str:
    """A policy domain in lowercase A-labels, as our domains are compared."""
    domain = ascii_domain(_text(value))
    if not domain:
        raise ReportError(TLS_UNPARSABLE, "policy domain is not a domain name")
    return domain


def _failure(value: Any) -> FailureDetail:
    entry = _object(value)
    return FailureDetail(
        result_type=_text(entry["result-type"]),
        failed_session_count=_count(entry["failed-session-count"]),
        sending_mta_ip=_optional_text(entry, "sending-mta-ip"),
        receiving_mx_hostname=_optional_text(entry, "receiving-mx-hostname"),
        receiving_mx_helo=_optional_text(entry, "receiving-mx-helo"),
        receiving_ip=_optional_text(entry, "receiving-ip"),
        additional_information=_optional_text(entry, "additional-information", MAX_LONG_TEXT),
        failure_reason_code=_optional_text(entry, "failure-reason-code"),
    )
