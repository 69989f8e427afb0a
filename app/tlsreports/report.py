"""RFC 8460 §4 aggregate report: the JSON document, its gzip form, its id and file name.

Input is plain data (`PolicyResult`, built on `PolicyRef` and `FailureDetail`: the terms delivery records
its TLS results in, app/tlsreports/results.py), so building a report needs no database and no DNS; the
daily job turns stored TLS results into these. Identical
policies are merged (counts summed, equal failures merged), so a report names each policy once.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from app.models.tlsrpt import PolicyType

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
class PolicyRef:
    """A policy as a report names it (RFC 8460 §4.4 "policy")."""

    policy_type: PolicyType
    policy_domain: str
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()

    @staticmethod
    def none_found(domain: str) -> PolicyRef:
        return PolicyRef("no-policy-found", domain)


@dataclass(frozen=True)
class FailureDetail:
    """RFC 8460 §4.4 "failure-details" of one failed session."""

    result_type: str
    sending_ip: str | None = None
    receiving_mx_hostname: str | None = None
    receiving_mx_helo: str | None = None
    receiving_ip: str | None = None
    failure_reason_code: str | None = None
    additional_info: str | None = None


@dataclass(frozen=True)
class FailureCount:
    """A failure as recorded by delivery (app/tlsreports/results.py) and how many sessions it ended."""

    detail: FailureDetail
    sessions: int

    def to_json(self) -> dict[str, Any]:
        d = self.detail
        entry: dict[str, Any] = {"result-type": d.result_type}
        optional = (
            ("sending-mta-ip", d.sending_ip),
            ("receiving-mx-hostname", d.receiving_mx_hostname),
            ("receiving-mx-helo", d.receiving_mx_helo),
            ("receiving-ip", d.receiving_ip),
        )
        entry.update((name, value) for name, value in optional if value)
        entry["failed-session-count"] = self.sessions
        if d.additional_info:
            entry["additional-information"] = d.additional_info
        if d.failure_reason_code:
            entry["failure-reason-code"] = d.failure_reason_code
        return entry


@dataclass(frozen=True)
class PolicyResult:
    """Sessions under one policy: one `policies[]` entry of a report."""

    policy: PolicyRef
    successful: int = 0
    failed: int = 0
    failures: tuple[FailureCount, ...] = field(default=())

    @property
    def has_failure(self) -> bool:
        return self.failed > 0 or bool(self.failures)

    def to_json(self) -> dict[str, Any]:
        p = self.policy
        policy: dict[str, Any] = {"policy-type": p.policy_type}
        if p.policy_string:
            policy["policy-string"] = list(p.policy_string)
        policy["policy-domain"] = p.policy_domain
        # RFC 8460 §4.4: one string; results are recorded per MX host, so a policy has one. Rows
        # recorded before that with all of a policy's patterns cannot be split: no mx-host then.
        if len(p.mx_host) == 1:
            policy["mx-host"] = p.mx_host[0]
        entry: dict[str, Any] = {
            "policy": policy,
            "summary": {
                "total-successful-session-count": self.successful,
                "total-failure-session-count": self.failed,
            },
        }
        if self.failures:
            entry["failure-details"] = [f.to_json() for f in self.failures]
        return entry


def merge_failures(failures: Iterable[FailureCount]) -> tuple[FailureCount, ...]:
    sessions: dict[FailureDetail, int] = {}
    for failure in failures:
        sessions[failure.detail] = sessions.get(failure.detail, 0) + failure.sessions
    return tuple(FailureCount(detail, count) for detail, count in sessions.items())


def merge_policies(results: Iterable[PolicyResult]) -> list[PolicyResult]:
    """One entry per distinct policy, counts summed and equal failures merged, in first-seen order."""
    merged: dict[PolicyRef, PolicyResult] = {}
    for result in results:
        known = merged.get(result.policy)
        if known is None:
            merged[result.policy] = replace(result, failures=merge_failures(result.failures))
            continue
        merged[result.policy] = PolicyResult(
            result.policy,
            known.successful + result.successful,
            known.failed + result.failed,
            merge_failures(known.failures + result.failures),
        )
    return list(merged.values())


def day_range(day: date) -> tuple[datetime, datetime]:
    """The report period: the whole UTC day, 00:00:00 to 23:59:59 (RFC 8460 §4.4 example)."""
    start = datetime.combine(day, time(0, 0, 0), tzinfo=UTC)
    return start, start + timedelta(days=1, seconds=-1)


def report_id(day: date, policy_domain: str, submitter: str, late: str = "") -> str:
    """`YYYYMMDD.<policy domain>@<submitter>`; a late report of a day already reported has its own,
    `YYYYMMDD.<late>.<policy domain>@<submitter>` (late: the run's cid, letters and digits)."""
    return f"{day:%Y%m%d}.{late + '.' if late else ''}{policy_domain}@{submitter}"


def report_filename(day: date, policy_domain: str, submitter: str, late: str = "") -> str:
    """RFC 8460 §5.1: `sender!policy-domain!begin-timestamp!end-timestamp[!unique-id].json.gz` (Unix
    seconds); a late report's `late` is the unique-id that tells it from the day's first report."""
    start, end = day_range(day)
    unique = f"!{late}" if late else ""
    return f"{submitter}!{policy_domain}!{int(start.timestamp())}!{int(end.timestamp())}{unique}.json.gz"


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Report:
    """One report about `policy_domain` for one UTC day, by `submitter` (our domain d, R5.3)."""

    policy_domain: str
    day: date
    submitter: str
    policies: tuple[PolicyResult, ...]
    late: str = ""  # set when the day was reported already: results recorded after its report

    @property
    def id(self) -> str:
        return report_id(self.day, self.policy_domain, self.submitter, self.late)

    @property
    def filename(self) -> str:
        return report_filename(self.day, self.policy_domain, self.submitter, self.late)

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


def build_report(
    policy_domain: str, day: date, submitter: str, results: Iterable[PolicyResult], late: str = ""
) -> Report:
    return Report(policy_domain, day, submitter, tuple(merge_policies(results)), late)
