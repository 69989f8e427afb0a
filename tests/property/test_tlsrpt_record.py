"""Properties of the TLSRPT record parser (app/tlsreports/record.py) on any TXT text."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.tlsreports.record import (
    TLSRPTRecord,
    TLSRPTRecordError,
    parse_tlsrpt_record,
    select_tlsrpt_record,
)
from tests.property.bounds import LARGE, LARGE_INPUT_SECONDS, finishes_within
from tests.property.strategies import address, decoded_text, domain, hostile_text, joined, repeated

SCHEMES = ("mailto:", "https://", "HTTPS://", "http://", "ftp:", "")
URI_PARTS = ("@", "%0d%0a", "%00", "%40", "?", ",", "[", "]", "[::1]", ":", "/", "#", "%")
# Mostly well-formed pieces, so that most records get as far as their URIs.
uri_part = st.one_of(st.sampled_from(URI_PARTS), address, domain, st.sampled_from(URI_PARTS), decoded_text)
valid_uri = st.one_of(address.map("mailto:{}".format), domain.map("https://{}/tlsrpt".format))
# Nested lists are kept short: a record of a dozen fields of a dozen URIs is slow to generate.
uri = st.one_of(valid_uri, st.builds(str.__add__, st.sampled_from(SCHEMES), joined(uri_part, st.just(""), 4)))
rua = joined(uri, st.sampled_from((",", " , ")), 3).map("rua={}".format)
extension = st.builds("{}={}".format, st.sampled_from(("x", "ext_1", "v")), st.one_of(domain, decoded_text))
field = st.one_of(rua, rua, extension, decoded_text)
after_version = joined(field, st.sampled_from((";", " ; ", ";\t")), 6)
record_text = st.one_of(decoded_text, after_version.map(lambda rest: "v=TLSRPTv1;" + rest))
# Where reports go: a mailto address is our RCPT TO and the report's To field, an https URI our request.
SAFE_DESTINATION = re.compile(r"[\x21-\x7e]+")


def check_record(record: TLSRPTRecord) -> None:
    assert all(SAFE_DESTINATION.fullmatch(d) for d in record.destinations), record.destinations
    assert all(d.startswith("mailto:") or d[:6].lower() == "https:" for d in record.destinations)


@given(record_text)
@example("v=TLSRPTv1; rua=https://[x")  # urlsplit() raises ValueError('Invalid IPv6 URL')
def test_parse_raises_only_its_own_error(text: str) -> None:
    try:
        record = parse_tlsrpt_record(text)
    except TLSRPTRecordError:
        return
    check_record(record)


@given(st.lists(record_text, max_size=3))
def test_selection_raises_only_its_own_error(values: list[str]) -> None:
    try:
        record = select_tlsrpt_record(values)
    except TLSRPTRecordError:
        return
    check_record(record)
    assert record.destinations


# Local parts without "%" and "?", which mean something else in a mailto URI.
mailbox = st.builds("{}@{}".format, st.from_regex(r"[A-Za-z0-9+_-]{1,12}", fullmatch=True), domain)


@given(
    st.lists(
        st.one_of(mailbox.map("mailto:{}".format), domain.map("https://{}/tlsrpt".format)),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from((";", " ; ", ";\t")),
    st.booleans(),
)
def test_valid_destinations_are_read_back(uris: list[str], delimiter: str, trailing: bool) -> None:
    """A record of valid mailto and https URIs yields each once, mailto domains in lower case."""
    text = "v=TLSRPTv1" + delimiter + "rua=" + ",".join(uris) + (delimiter if trailing else "")
    record = parse_tlsrpt_record(text)
    expected = list(dict.fromkeys(u for u in uris if u.startswith("mailto:"))) + list(
        dict.fromkeys(u for u in uris if u.startswith("https:"))
    )
    assert list(record.destinations) == expected
    assert record.ignored == ()


@settings(max_examples=max(10, settings().max_examples // 4))  # large inputs: fewer
@given(repeated(st.one_of(hostile_text, field.map(lambda f: f + ";")), LARGE))
@example("rua=mailto:a@b.example" + "\t" * LARGE + "x")
def test_large_records_parse_quickly(rest: str) -> None:
    with finishes_within(LARGE_INPUT_SECONDS):
        try:
            parse_tlsrpt_record("v=TLSRPTv1;" + rest)
        except TLSRPTRecordError:
            return
