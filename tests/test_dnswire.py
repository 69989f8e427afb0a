"""app/dnswire.py: the TXT query as dnspython reads it, and replies read from hostile bytes."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from hypothesis import given
from hypothesis import strategies as st

from app.dnswire import question_name, read_txt_reply, txt_query

QNAME = question_name("_smtp._tls.Example.NET")
assert QNAME is not None


def reply(*rrsets: dns.rrset.RRset, rcode: dns.rcode.Rcode = dns.rcode.NOERROR) -> dns.message.Message:
    query = dns.message.from_wire(txt_query(4242, QNAME))
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    response.answer.extend(rrsets)
    return response


def txt(name: str, *values: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, 60, "IN", "TXT", *values)


def test_the_query_is_a_recursive_txt_query_with_edns_and_do() -> None:
    query = dns.message.from_wire(txt_query(4242, QNAME))
    assert query.id == 4242 and query.flags & dns.flags.RD
    assert query.question[0].to_text() == "_smtp._tls.Example.NET. IN TXT"
    assert query.edns == 0 and query.payload == 1232 and query.ednsflags & dns.flags.DO


def test_names_dns_cannot_carry_plainly_are_left_to_the_resolver() -> None:
    assert question_name("example.org.") == question_name("example.org") == b"\x07example\x03org\x00"
    for name in ("a..b", "x" * 64 + ".example", "bücher.example", "a\\.b.example", ".".join(["abc"] * 70)):
        assert question_name(name) is None


def test_txt_records_of_the_question_name_are_read() -> None:
    response = reply(txt("_smtp._tls.example.net.", '"v=TLSRPTv1; " "rua=mailto:a@example.net"', '"other"'))
    read = read_txt_reply(response.to_wire(), QNAME)
    assert read is not None and read.rcode == 0 and not read.unclear
    assert sorted(read.records) == ["other", "v=TLSRPTv1; rua=mailto:a@example.net"]
    # Without name compression the owner is written out: the same name, in any case.
    uncompressed = reply(txt("_SMTP._tls.example.net.", '"x"')).to_wire(max_size=65535)
    assert read_txt_reply(uncompressed.replace(b"\xc0\x0c", QNAME), QNAME) is not None


def test_what_it_does_not_read_plainly_is_unclear() -> None:
    cname = dns.rrset.from_text("_smtp._tls.example.net.", 60, "IN", "CNAME", "elsewhere.example.")
    other = txt("elsewhere.example.", '"v=TLSRPTv1; rua=mailto:evil@example.com"')
    for rrsets in ((cname, other), (other,)):
        read = read_txt_reply(reply(*rrsets).to_wire(), QNAME)
        assert read is not None and read.unclear


def test_rcodes_and_extended_rcodes() -> None:
    nxdomain = read_txt_reply(reply(rcode=dns.rcode.NXDOMAIN).to_wire(), QNAME)
    assert nxdomain is not None and nxdomain.rcode == 3
    badvers = reply(rcode=dns.rcode.BADVERS)  # 16: only in the OPT record's upper bits
    read = read_txt_reply(badvers.to_wire(), QNAME)
    assert read is not None and read.rcode == 16


def test_not_an_answer_to_our_question() -> None:
    good = reply(txt("_smtp._tls.example.net.", '"x"')).to_wire()
    other_name = question_name("_smtp._tls.example.com")
    assert other_name is not None
    assert read_txt_reply(good, other_name) is None
    query = txt_query(4242, QNAME)
    assert read_txt_reply(query, QNAME) is None  # QR not set: a query, not a response
    assert read_txt_reply(good + b"\x00", QNAME) is None  # trailing octets


def test_every_truncation_of_a_reply_is_dropped() -> None:
    good = reply(txt("_smtp._tls.example.net.", '"v=TLSRPTv1; rua=mailto:a@example.net"')).to_wire()
    assert read_txt_reply(good, QNAME) is not None
    assert all(read_txt_reply(good[:cut], QNAME) is None for cut in range(len(good)))


@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    read_txt_reply(data, QNAME)


@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_corrupted_replies_never_raise(position: int, junk: bytes) -> None:
    good = bytearray(reply(txt("_smtp._tls.example.net.", '"a"', '"b c"')).to_wire())
    position %= len(good)
    good[position : position + len(junk)] = junk
    read = read_txt_reply(bytes(good), QNAME)
    assert read is None or all(isinstance(r, str) for r in read.records)
