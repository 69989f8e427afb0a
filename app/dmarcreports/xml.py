"""The aggregate report document (RFC 9990 section 2.1 and Appendix A), written gzipped as rows stream in.

The schema fixes the element order where it uses sequences (feedback, record, row, policy_evaluated,
auth_results); the other elements are written in the order the schema lists them. RFC 9990 narrowed
`error` to one element, so the problems met while composing share it, separated by "; ".
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import version
from xml.sax.saxutils import escape

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
GENERATOR = f"Postwarden {version('postwarden')}"
# RFC 9990 PolicyOverrideType; RFC 7489's "forwarded" became trusted_forwarder, other words go as "other".
OVERRIDE_TYPES = {"local_policy", "mailing_list", "other", "policy_test_mode", "trusted_forwarder"}
OVERRIDE_ALIASES = {"forwarded": "trusted_forwarder"}
STRENGTH = {"none": 0, "quarantine": 1, "reject": 2}


@dataclass(frozen=True)
class Metadata:
    org_name: str
    email: str
    report_id: str
    begin: int  # UTC seconds
    end: int
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PolicyPublished:
    domain: str
    p: str
    sp: str | None
    np: str | None
    adkim: str
    aspf: str
    testing: bool
    discovery_method: str
    fo: str | None = None


@dataclass(frozen=True)
class Row:
    """One merged report record, as stored by app/dmarcreports/evaluations.py plus its count."""

    count: int
    source_ip: str
    disposition: str
    requested_disposition: str | None
    dkim_aligned: bool
    spf_aligned: bool
    override_reasons: str  # JSON lists, as stored
    envelope_to: str
    envelope_from: str
    header_from: str
    dkim_results: str  # JSON [[domain, selector, result], ...]
    spf_results: str  # JSON [[domain, scope, result], ...]


def filename(host: str, policy_domain: str, begin: int, end: int) -> str:
    """RFC 9990 2.6.2: `receiver!policy-domain!begin!end.xml.gz`."""
    return f"{host}!{policy_domain}!{begin}!{end}.xml.gz"


def requested_disposition(row: Row, policy: PolicyPublished) -> str:
    """The policy that applied to the row's From domain: known for failing mail, else from p and sp."""
    if row.requested_disposition:
        return row.requested_disposition
    return policy.p if row.header_from == policy.domain else policy.sp or policy.p


def action_disposition(row: Row, policy: PolicyPublished) -> str:
    """What we did: RFC 9990 adds "pass" for mail that passed under an enforcing policy."""
    requested = requested_disposition(row, policy)
    if row.disposition == "none" and (row.dkim_aligned or row.spf_aligned) and requested != "none":
        return "pass"
    return row.disposition


def override_reasons(row: Row, policy: PolicyPublished) -> list[tuple[str, str]]:
    """(type, comment) reasons; one is required when a failing message got less than the policy asked."""
    reasons = list(_stated_reasons(row.override_reasons))
    requested = requested_disposition(row, policy)
    failed = not (row.dkim_aligned or row.spf_aligned)
    if failed and not reasons and STRENGTH.get(row.disposition, 0) < STRENGTH.get(requested, 0):
        reasons.append(("policy_test_mode", "") if policy.testing else ("local_policy", ""))
    return reasons


@lru_cache(maxsize=256)
def _stated_reasons(override_reasons: str) -> tuple[tuple[str, str], ...]:
    """(type, comment) for the reason words stored with an evaluation."""
    reasons = []
    for word in json.loads(override_reasons):
        kind = OVERRIDE_ALIASES.get(word, word)
        reasons.append((kind, "") if kind in OVERRIDE_TYPES else ("other", word))
    return tuple(reasons)


class ReportWriter:
    """Writes one report: header first, then records; `finish()` returns the gzip bytes.

    Records are handed to the compressor `BATCH` at a time: a compressor call per record costs more
    than the compression itself, and a batch keeps a report of many rows from being held whole.
    """

    BATCH = 256

    def __init__(self, metadata: Metadata, policy: PolicyPublished) -> None:
        self._buffer = io.BytesIO()
        # mtime=0: the same report gzips to the same bytes; compresslevel 6 is nearly as small, faster.
        self._gzip = gzip.GzipFile(fileobj=self._buffer, mode="wb", compresslevel=6, mtime=0)
        self.policy = policy
        self.rows = 0
        self.messages = 0
        self._pending = [_header(metadata, policy)]

    def add(self, row: Row) -> None:
        self._pending.append(_record(row, self.policy))
        self.rows += 1
        self.messages += row.count
        if len(self._pending) >= self.BATCH:
            self._flush()

    def add_all(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.add(row)

    def finish(self) -> bytes:
        self._pending.append("</feedback>\n")
        self._flush()
        self._gzip.close()
        return self._buffer.getvalue()

    def _flush(self) -> None:
        self._gzip.write("".join(self._pending).encode("utf-8"))
        self._pending = []


def _element(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def _header(metadata: Metadata, policy: PolicyPublished) -> str:
    error = _element("error", "; ".join(metadata.errors)) if metadata.errors else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<feedback xmlns="{NAMESPACE}">\n'
        "<version>1.0</version>\n"
        "<report_metadata>"
        f"{_element('org_name', metadata.org_name)}{_element('email', metadata.email)}"
        f"{_element('report_id', metadata.report_id)}"
        f"<date_range>{_element('begin', metadata.begin)}{_element('end', metadata.end)}</date_range>"
        f"{error}{_element('generator', GENERATOR)}"
        "</report_metadata>\n"
        f"{_policy_published(policy)}\n"
    )


def _policy_published(policy: PolicyPublished) -> str:
    """Tags left out of the record are reported with their defaults (Appendix A), np after sp after p."""
    sp = policy.sp or policy.p
    parts = [
        _element("domain", policy.domain),
        _element("discovery_method", policy.discovery_method),
        _element("adkim", policy.adkim),
        _element("aspf", policy.aspf),
        _element("p", policy.p),
        _element("sp", sp),
        _element("np", policy.np or sp),
        _element("testing", "y" if policy.testing else "n"),
    ]
    if policy.fo:
        parts.append(_element("fo", policy.fo))
    return f"<policy_published>{''.join(parts)}</policy_published>"


def _record(row: Row, policy: PolicyPublished) -> str:
    evaluated = _evaluated(
        action_disposition(row, policy),
        row.dkim_aligned,
        row.spf_aligned,
        tuple(override_reasons(row, policy)),
    )
    identified = _identified(
        row.envelope_to, row.envelope_from, row.header_from, row.dkim_results, row.spf_results
    )
    # The count is an int: nothing in it to escape.
    return (
        f"<record><row>{_element('source_ip', row.source_ip)}<count>{row.count}</count>{evaluated}</row>"
        f"{identified}</record>\n"
    )


# Rows of a report, and of all reports, repeat the same few evaluations, identifiers and result
# lists: each combination is rendered once.


@lru_cache(maxsize=1024)
def _evaluated(
    disposition: str, dkim_aligned: bool, spf_aligned: bool, reasons: tuple[tuple[str, str], ...]
) -> str:
    """A record's policy_evaluated."""
    reasons_xml = "".join(
        f"<reason>{_element('type', kind)}{_element('comment', comment) if comment else ''}</reason>"
        for kind, comment in reasons
    )
    return (
        f"<policy_evaluated>{_element('disposition', disposition)}"
        f"{_element('dkim', 'pass' if dkim_aligned else 'fail')}"
        f"{_element('spf', 'pass' if spf_aligned else 'fail')}{reasons_xml}</policy_evaluated>"
    )


@lru_cache(maxsize=4096)
def _identified(envelope_to: str, envelope_from: str, header_from: str, dkim: str, spf: str) -> str:
    """A record's identifiers and auth_results."""
    to = _element("envelope_to", envelope_to) if envelope_to else ""
    identifiers = (
        f"<identifiers>{to}{_element('envelope_from', envelope_from)}"
        f"{_element('header_from', header_from)}</identifiers>"
    )
    auth = _dkim_elements(dkim) + _spf_elements(spf, envelope_from or header_from)
    return f"{identifiers}<auth_results>{auth}</auth_results>"


@lru_cache(maxsize=4096)
def _dkim_elements(dkim_results: str) -> str:
    return "".join(
        f"<dkim>{_element('domain', domain)}{_element('selector', selector)}"
        f"{_element('result', result)}</dkim>"
        for domain, selector, result in json.loads(dkim_results)
    )


@lru_cache(maxsize=4096)
def _spf_elements(spf_results: str, checked_domain: str) -> str:
    """The one SPF result RFC 9990's schema allows, scope `mfrom` (the HELO result is not reported).

    For the null sender the stored mfrom result is the HELO name's (RFC 7208 2.4). Without one, SPF
    found nothing to check: reported as `none` for the domain it would have checked.
    """
    mfrom = [(domain, result) for domain, scope, result in json.loads(spf_results) if scope == "mfrom"]
    domain, result = mfrom[0] if mfrom else (checked_domain, "none")
    return f"<spf>{_element('domain', domain)}{_element('scope', 'mfrom')}{_element('result', result)}</spf>"
