"""Properties of the header reading of app/auth/message.py on arbitrary message octets: header_fields,
author (RFC5322.From) and summarize_headers never raise, and what they return is well-formed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.auth.message import MAX_FROM_LENGTH, ascii_domain, author, header_fields, summarize_headers
from tests.property.bounds import LARGE_INPUT_SECONDS, finishes_within
from tests.property.strategies import address, decoded_text, hostile_bytes, joined, repeated

FROM_PARTS = ("<", ">", "@", ",", ";", ":", '"', "\\", "(", ")", "=?utf-8?q?", "?=", " ", ".", "[", "]")
from_value = joined(
    st.one_of(st.sampled_from(FROM_PARTS), address, decoded_text),
    st.sampled_from(("", " ", "\r\n ")),
)
header_line = st.one_of(
    st.builds(
        "{}: {}".format, st.sampled_from(("From", "from", "FROM ", "Subject", "Message-ID")), from_value
    ),
    decoded_text,
)
message = st.one_of(
    hostile_bytes,
    joined(header_line, st.sampled_from(("\r\n", "\n", "\r\n\t", "\r"))).map(
        lambda headers: (headers + "\r\n\r\nbody\r\n").encode("utf-8", "surrogatepass")
    ),
)


@given(message)
def test_header_reading_never_raises(data: bytes) -> None:
    fields = header_fields(data)
    assert all(name and name.isascii() and name.isprintable() and ":" not in name for name, _ in fields)
    found = author(data)
    assert found.domain == "" or ascii_domain(found.domain) == found.domain
    assert not found.address or found.address.endswith("@" + found.domain)
    assert found.domain or found.problem
    summarize_headers(data)


@settings(max_examples=max(10, settings().max_examples // 4))  # large inputs: fewer
@given(repeated(st.one_of(st.sampled_from(FROM_PARTS), from_value), MAX_FROM_LENGTH - 8))
def test_longest_from_fields_are_read_quickly(value: str) -> None:
    data = f"From: {value}\r\nSubject: x\r\n\r\n".encode("utf-8", "surrogatepass")
    with finishes_within(LARGE_INPUT_SECONDS):
        author(data)
