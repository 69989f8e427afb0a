"""RFC 8460 §4 aggregate report: the JSON document, its gzip form, its id and file name.

Input is plain data (`PolicyResult`), so building a report needs no database and no DNS; the daily job
turns stored TLS results into these. Identical policies are merged (counts summed, equal failure
details merged), so a report names each policy once.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

POLICY_TYPES = frozenset({"tlsa", "sts", "no-policy-found"})
# RFC 8460 §4.3: negotiation failures, then DANE (policy-type tlsa), then MTA-STS (sts) failures.
RESULT_TYPES = frozenset(
    {
        "starttls-not-supported",
        "certificate-host-mismatch",
        "certificate-expired",
        "certificate-not-trusted",
        "validation-failure",
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    }
)
MEDIA_TYPE = "application/tlsrpt+gzip"


@dataclass(frozen=True)
class FailureDetail:
    result_type: str
    failed_session_count: int
    sending_mta_ip: str | None = None
    receiving_mx_hostname: str | None = None
    receiving_mx_helo: str | None = None
    receiving_ip: str | None = None
    failure_reason_code: str | None = None
    additional_information: str | None = None

    @property
    def key(self) -> tuple[str | None, ...]:
        """What makes two details the same failure (everything but the count)."""
        return (
            self.result_type,
            self.sending_mta_ip,
            self.receiving_mx_hostname,
            self.receiving_mx_helo,
            self.receiving_ip,
            self.failure_reason_code,
            self.additional_information,
        )

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"result-type": self.result_type}
        optional = (
            ("sending-mta-ip", self.sending_mta_ip),
            ("receiving-mx-hostname", self.receiving_mx_hostname),
            ("receiving-mx-helo", self.receiving_mx_helo),
            ("receiving-ip", self.receiving_ip),
        )
        entry.update((name, value) for name, value in optional if value)
        entry["failed-session-count"] = self.failed_session_count
        if self.additional_information:
            entry["additional-information"] = self.additional_information
        if self.failure_reason_code:
            entry["failure-reason-code"] = self.failure_reason_code
        return entry


@dataclass(frozen=True)
class PolicyResult:
    """Sessions under one policy: the `policies[]` entry of a report."""

    policy_type: str
    policy_domain: str
    policy_strings: tuple[str, ...] = ()
    mx_hosts: tuple[str, ...] = ()
    successful: int = 0
    failed: int = 0
    failure_details: tuple[FailureDetail, ...] = field(default=())

    @property
    def key(self) -> tuple[object, ...]:
        return (self.policy_type, self.policy_domain, self.policy_strings, self.mx_hosts)

    @property
    def has_failure(self) -> bool:
        return self.failed > 0 or bool(self.failure_details)

    def to_json(self) -> dict[str, Any]:
        policy: dict[str, Any] = {"policy-type": self.policy_type}
        if self.policy_strings:
            policy["policy-string"] = list(self.policy_strings)
        policy["policy-domain"] = self.policy_domain
        if self.mx_hosts:
            policy["mx-host"] = list(self.mx_hosts)
        entry: dict[str, Any] = {
            "policy": policy,
            "summary": {
                "total-successful-session-count": self.successful,
                "total-failure-session-count": self.failed,
            },
        }
        if self.failure_details:
            entry["failure-details"] = [d.to_json() for d in self.failure_details]
        return entry


def merge_details(details: Iterable[FailureDetail]) -> tuple[FailureDetail, ...]:
    merged: dict[tuple[str | None, ...], FailureDetail] = {}
    for detail in details:
        known = merged.get(detail.key)
        merged[detail.key] = (
            detail
            if known is None
            else replace(known, failed_session_count=known.failed_session_count + detail.failed_session_count)
        )
    return tuple(merged.values())


def merge_policies(results: Iterable[PolicyResult]) -> list[PolicyResult]:
    """One entry per distinct policy, counts summed, in first-seen order."""
    merged: dict[tuple[object, ...], PolicyResult] = {}
    for result in results:
        known = merged.get(result.key)
        if known is None:
            merged[result.key] = replace(result, failure_details=merge_details(result.failure_details))
            continue
        merged[result.key] = replace(
            known,
            successful=known.successful + result.successful,
            failed=known.failed + result.failed,
            failure_details=merge_details(known.failure_details + result.failure_details),
        )
    return list(merged.values())


def day_range(day: date) -> tuple[datetime, datetime]:
    """The report period: the whole UTC day, 00:00:00 to 23:59:59 (RFC 8460 §4.4 example)."""
    start = datetime.combine(day, time(0, 0, 0), tzinfo=UTC)
    return start, start + timedelta(days=1, seconds=-1)


def report_id(day: date, policy_domain: str, submitter: str) -> str:
    return f"{day:%Y%m%d}.{policy_domain}@{submitter}"


def report_filename(day: date, policy_domain: str, submitter: str) -> str:
    """RFC 8460 §5.1: `sender!policy-domain!begin-timestamp!end-timestamp.json.gz` (Unix seconds)."""
    start, end = day_range(day)
    return f"{submitter}!{policy_domain}!{int(start.timestamp())}!{int(end.timestamp())}.json.gz"


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Report:
    """One report about `policy_domain` for one UTC day, by `submitter` (our domain d, R5.3)."""

    policy_domain: str
    day: date
    submitter: str
    policies: tuple[PolicyResult, ...]

    @property
    def id(self) -> str:
        return report_id(self.day, self.policy_domain, self.submitter)

    @property
    def filename(self) -> str:
        return report_filename(self.day, self.policy_domain, self.submitter)

    @property
    def contact(self) -> str:
        return f"postmaster@{self.submitter}"

    @property
    def has_failure(self) -> bool:
        return any(p.has_failure for p in self.policies)

    @property
    def sessions(self) -> tuple[int, int]:
        """(successful, failed) sessions over all policies, for the log."""
        return sum(p.successful for p in self.policies), sum(p.failed for p in self.policies)

    def to_json(self) -> dict[str, Any]:
        start, end = day_range(self.day)
        return {
            "organization-name": self.submitter,
            "date-range": {"start-datetime": _rfc3339(start), "end-datetime": _rfc3339(end)},
            "contact-info": self.contact,
            "report-id": self.id,
            "policies": [p.to_json() for p in self.policies],
        }

    def json_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode()

    def gzipped(self) -> bytes:
        # mtime 0: the same report compresses to the same bytes (no clock in the gzip header).
        return gzip.compress(self.json_bytes(), compresslevel=6, mtime=0)


def build_report(policy_domain: str, day: date, submitter: str, results: Iterable[PolicyResult]) -> Report:
    return Report(policy_domain, day, submitter, tuple(merge_policies(results)))
