"""DMARC aggregate report XML (RFC 9990 Appendix A, and the RFC 7489 Appendix C form) into dataclasses.

The document is read with defusedxml's iterparse: a DTD, entity declarations and external references are
refused (XXE, billion laughs), and records are turned into dataclasses and dropped from the tree one by
one, so memory follows the records kept, not the document. Elements, depth, records and each record's
elements are counted as they start, and refused past their bounds; text is cut to fixed lengths and
numbers must lie in range. Elements are matched by local name, so the RFC 9990 namespace, the RFC 7489
documents without one and the namespaces some reporters invented all read the same; unknown elements
(extensions) are skipped.
"""

from __future__ import annotations

import io
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar
from xml.etree.ElementTree import Element, ParseError

# defusedxml ships no type hints and pyproject has no stub package for it: the two names used are typed here.
import defusedxml.ElementTree  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException

from app.auth.message import ascii_domain
from app.inreports.errors import DMARC_UNPARSABLE, POLICY_DOMAIN_UNPARSABLE, ReportError

MAX_ELEMENTS = 4_000_000  # 100,000 records of some 25 elements each, and room to spare
MAX_RECORDS = 100_000
MAX_RECORD_ELEMENTS = 1_000  # within one record: auth results and reasons are a handful
MAX_DEPTH = 16  # feedback/record/auth_results/dkim/domain is 5; extensions get some room
MAX_LIST = 100  # dkim and spf results, reasons, errors: more are dropped
MAX_TEXT = 256  # most text fields (a domain name is at most 253)
MAX_LONG_TEXT = 1024  # comments, human results, errors, extra contact info
MAX_COUNT = 2**31 - 1  # a record's message count: fits the database's integer
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime holds

_T = TypeVar("_T")


@dataclass(frozen=True)
class Metadata:
    org_name: str
    email: str
    report_id: str
    begin: datetime
    end: datetime
    extra_contact_info: str = ""
    errors: tuple[str, ...] = ()
    generator: str = ""


@dataclass(frozen=True)
class PolicyPublished:
    domain: str
    adkim: str = ""
    aspf: str = ""
    p: str = ""
    sp: str = ""
    np: str = ""
    pct: int | None = None  # RFC 7489
    testing: str = ""  # RFC 9990: y or n
    fo: str = ""
    discovery_method: str = ""  # RFC 9990: psl or treewalk


@dataclass(frozen=True)
class Reason:
    type: str
    comment: str = ""


@dataclass(frozen=True)
class DKIMResult:
    domain: str
    selector: str
    result: str
    human_result: str = ""


@dataclass(frozen=True)
class SPFResult:
    domain: str
    scope: str
    result: str
    human_result: str = ""


@dataclass(frozen=True)
class Record:
    source_ip: str
    count: int
    disposition: str
    dkim: str  # policy_evaluated: the aligned DKIM result
    spf: str
    header_from: str
    reasons: tuple[Reason, ...] = ()
    envelope_from: str = ""
    envelope_to: str = ""
    dkim_results: tuple[DKIMResult, ...] = ()
    spf_results: tuple[SPFResult, ...] = ()


@dataclass(frozen=True)
class AggregateReport:
    metadata: Metadata
    policy: PolicyPublished
    records: tuple[Record, ...]
    version: str = ""

    @property
    def messages(self) -> int:
        return sum(record.count for record in self.records)


@dataclass(frozen=True)
class Head:
    """What a report says before its records: enough to decide whether to take it (SPEC R6.2)."""

    metadata: Metadata
    policy: PolicyPublished


def parse(document: bytes) -> AggregateReport:
    """The report in `document` (already bounded in size by app/inreports/unpack.py)."""
    return _guarded(lambda: _Reader().read(document))


def parse_head(document: bytes) -> Head:
    """The metadata and published policy of the report in `document`, read with the same reader and
    bounds as `parse`, stopping once both are read: the records after them are neither parsed nor
    checked, so the SMTP transaction pays for the head only (the task parses the whole report)."""
    return _guarded(lambda: _Reader(head_only=True).read_head(document))


def _guarded(read: Callable[[], _T]) -> _T:
    try:
        return read()
    except (ParseError, DefusedXmlException, ValueError, KeyError) as error:
        raise ReportError(DMARC_UNPARSABLE, "malformed aggregate report") from error


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class _Reader:
    """One pass over the document's start and end events, keeping only what is parsed."""

    def __init__(self, head_only: bool = False) -> None:
        self.head_only = head_only  # stop after the metadata and policy; records are skipped
        self.elements = 0
        self.depth = 0
        self.record_start = 0
        self.version = ""
        self.metadata: Metadata | None = None
        self.policy: PolicyPublished | None = None
        self.records: list[Record] = []

    def read(self, document: bytes) -> AggregateReport:
        head = self.read_head(document)
        return AggregateReport(head.metadata, head.policy, tuple(self.records), self.version)

    def read_head(self, document: bytes) -> Head:
        """Read the document (up to its head when `head_only`) and check what every report has."""
        root: Element | None = None
        for event, element in self._events(document):
            if event == "start":
                root = element if root is None else root
                self._started(element)
                continue
            self.depth -= 1
            if self.depth == 1 and root is not None:  # a child of <feedback>
                self._top_level(element)
                root.remove(element)
                if self.head_only and self.metadata is not None and self.policy is not None:
                    break
        if root is None or _local(root.tag) != "feedback":
            raise ReportError(DMARC_UNPARSABLE, "not an aggregate report")
        if self.metadata is None or self.policy is None:
            raise ReportError(DMARC_UNPARSABLE, "report metadata or published policy missing")
        return Head(self.metadata, self.policy)

    @staticmethod
    def _events(document: bytes) -> Iterator[tuple[str, Element]]:
        events: Iterator[tuple[str, Element]] = defusedxml.ElementTree.iterparse(
            io.BytesIO(document),
            events=("start", "end"),
            forbid_dtd=True,
            forbid_entities=True,
            forbid_external=True,
        )
        return events

    def _started(self, element: Element) -> None:
        self.elements += 1
        self.depth += 1
        if self.elements > MAX_ELEMENTS:
            raise ReportError(DMARC_UNPARSABLE, "too many elements")
        if self.depth > MAX_DEPTH:
            raise ReportError(DMARC_UNPARSABLE, "elements nested too deeply")
        if self.depth == 2 and _local(element.tag) == "record":
            self.record_start = self.elements
            if len(self.records) >= MAX_RECORDS:
                raise ReportError(DMARC_UNPARSABLE, "too many records")
        elif self.depth > 2 and self.record_start and self.elements - self.record_start > MAX_RECORD_ELEMENTS:
            raise ReportError(DMARC_UNPARSABLE, "record too large")

    def _top_level(self, element: Element) -> None:
        name = _local(element.tag)
        if name == "record":
            if not self.head_only:
                self.records.append(_record(element))
            self.record_start = 0
        elif name == "report_metadata":
            self.metadata = _metadata(element)
        elif name == "policy_published":
            self.policy = _policy(element)
        elif name == "version":
            self.version = _text(element)


def _children(element: Element | None, name: str) -> Iterator[Element]:
    if element is not None:
        yield from (child for child in element if _local(child.tag) == name)


def _child(element: Element | None, name: str) -> Element | None:
    return next(_children(element, name), None)


def _text(element: Element | None, limit: int = MAX_TEXT) -> str:
    if element is None or element.text is None:
        return ""
    return element.text.strip()[:limit]


def _field(element: Element | None, name: str, limit: int = MAX_TEXT) -> str:
    return _text(_child(element, name), limit)


def _required(element: Element | None, name: str) -> str:
    value = _field(element, name)
    if not value:
        raise ReportError(DMARC_UNPARSABLE, "required element missing")
    return value


def _integer(text: str, highest: int) -> int:
    """A decimal count: digits only (no sign, no spaces inside), 0 to `highest`."""
    if not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) > highest:
        raise ReportError(DMARC_UNPARSABLE, "number out of range")
    return int(text)


def _timestamp(text: str) -> datetime:
    return datetime.fromtimestamp(_integer(text, MAX_TIMESTAMP), UTC)


def _metadata(element: Element) -> Metadata:
    dates = _child(element, "date_range")
    begin, end = _timestamp(_required(dates, "begin")), _timestamp(_required(dates, "end"))
    if end < begin:
        raise ReportError(DMARC_UNPARSABLE, "date range ends before it begins")
    errors = [_text(error, MAX_LONG_TEXT) for error in _children(element, "error")]
    return Metadata(
        org_name=_required(element, "org_name"),
        email=_field(element, "email"),
        report_id=_required(element, "report_id"),
        begin=begin,
        end=end,
        extra_contact_info=_field(element, "extra_contact_info", MAX_LONG_TEXT),
        errors=tuple(errors[:MAX_LIST]),
        generator=_field(element, "generator"),
    )


def _policy(element: Element) -> PolicyPublished:
    """The published policy; its domain in lowercase A-labels, as our domains are compared."""
    domain = ascii_domain(_required(element, "domain"))
    if not domain:
        raise ReportError(POLICY_DOMAIN_UNPARSABLE, "policy domain is not a domain name")
    pct = _field(element, "pct")
    return PolicyPublished(
        domain=domain,
        adkim=_field(element, "adkim"),
        aspf=_field(element, "aspf"),
        p=_field(element, "p"),
        sp=_field(element, "sp"),
        np=_field(element, "np"),
        pct=_integer(pct, 100) if pct else None,
        testing=_field(element, "testing"),
        fo=_field(element, "fo"),
        discovery_method=_field(element, "discovery_method"),
    )


def _record(element: Element) -> Record:
    row = _child(element, "row")
    evaluated = _child(row, "policy_evaluated")
    identifiers = _child(element, "identifiers")
    auth = _child(element, "auth_results")
    reasons = [
        Reason(_field(reason, "type"), _field(reason, "comment", MAX_LONG_TEXT))
        for reason in _children(evaluated, "reason")
    ]
    dkim = [DKIMResult(*_auth_result(r, "selector")) for r in _children(auth, "dkim")]
    spf = [SPFResult(*_auth_result(r, "scope")) for r in _children(auth, "spf")]
    return Record(
        source_ip=str(ipaddress.ip_address(_required(row, "source_ip"))),
        count=_integer(_required(row, "count"), MAX_COUNT),
        disposition=_field(evaluated, "disposition"),
        dkim=_field(evaluated, "dkim"),
        spf=_field(evaluated, "spf"),
        header_from=_required(identifiers, "header_from"),
        reasons=tuple(reasons[:MAX_LIST]),
        envelope_from=_field(identifiers, "envelope_from"),
        envelope_to=_field(identifiers, "envelope_to"),
        dkim_results=tuple(dkim[:MAX_LIST]),
        spf_results=tuple(spf[:MAX_LIST]),
    )


def _auth_result(element: Element, middle: str) -> tuple[str, str, str, str]:
    """domain, selector (DKIM) or scope (SPF), result, human_result."""
    return (
        _field(element, "domain"),
        _field(element, middle),
        _field(element, "result"),
        _field(element, "human_result", MAX_LONG_TEXT),
    )
