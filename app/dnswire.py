"""A TXT query and its answer in DNS wire format (RFC 1035 4.1, EDNS RFC 6891), for `BulkTXT` (app/dns.py).

dnspython builds and parses every part of a message as objects: for a batch job's 100,000 lookups
that was most of the job's CPU. Here the query is written directly, and of the answer only what a
TXT lookup needs is read: the header, the question (which must be ours, literally), the answer
section's TXT records of the question's name, whether it holds a CNAME or DNAME, and an OPT's
extended rcode. Everything else is skipped by its lengths, never interpreted.

An answer is hostile data: every length is checked against the datagram, names are skipped label by
label (a compression pointer ends one), and anything that does not add up is `None` (the caller drops
the datagram). What is read here but not understood (an owner name of a TXT record other than the
question's in its usual forms) is reported as such, so the caller asks dnspython's resolver instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

TXT = 16
CNAME = 5
DNAME = 39
OPT = 41
CLASS_IN = 1
QR = 0x8000
TC = 0x0200
RD = 0x0100
AD = 0x0020
NXDOMAIN = 3
EDNS_PAYLOAD = 1232  # as app/dns.py's Resolver announces
DO = 0x8000  # in an OPT's TTL: DNSSEC records wanted, so a validating resolver sets AD
_OPT_RECORD = b"\x00" + struct.pack("!HHIH", OPT, EDNS_PAYLOAD, DO, 0)
_QUESTION_TAIL = struct.pack("!HH", TXT, CLASS_IN)
_TO_QUESTION = b"\xc0\x0c"  # a compression pointer to the question's name, right after the header


@dataclass(frozen=True)
class TXTReply:
    flags: int
    rcode: int  # with an OPT's extended rcode bits
    records: list[str]  # the question name's TXT values, each its character-strings joined
    unclear: bool  # a CNAME or DNAME, or a TXT record whose owner is not plainly the question name


def question_name(name: str) -> bytes | None:
    """`name` in wire format; None if it is not a plain ASCII name DNS can carry (no escapes: those,
    like any other name, the resolver takes)."""
    if not name.isascii() or "\\" in name:
        return None
    wire = b""
    for label in name.removesuffix(".").encode("ascii").split(b"."):
        if not 0 < len(label) < 64:
            return None
        wire += bytes([len(label)]) + label
    wire += b"\x00"
    return wire if len(wire) <= 255 else None


def txt_query(query_id: int, qname: bytes) -> bytes:
    """A recursive TXT query for `qname` (wire format), with EDNS as the resolver sends it."""
    return struct.pack("!HHHHHH", query_id, RD, 1, 0, 0, 1) + qname + _QUESTION_TAIL + _OPT_RECORD


def read_txt_reply(data: bytes, qname: bytes) -> TXTReply | None:
    """The reply to our TXT query for `qname` (its id already matched); None if `data` is not one."""
    try:
        return _read(data, qname)
    except (IndexError, struct.error, _Malformed):
        return None


class _Malformed(Exception):
    pass


def _read(data: bytes, qname: bytes) -> TXTReply:
    flags, questions, answers, authority, additional = struct.unpack_from("!HHHHH", data, 2)
    if not flags & QR or flags & 0x7800 or questions != 1:  # a response, opcode QUERY, one question
        raise _Malformed
    end = 12 + len(qname)
    if data[12:end].lower() != qname.lower() or data[end : end + 4] != _QUESTION_TAIL:
        raise _Malformed
    position = end + 4
    records: list[str] = []
    unclear = False
    for _ in range(answers):
        owner_start = position
        position = _skip_name(data, position)
        owner = data[owner_start:position]
        kind, klass, _ttl, length = struct.unpack_from("!HHIH", data, position)
        rdata = _rdata(data, position + 10, length)
        position += 10 + length
        if kind in (CNAME, DNAME):
            unclear = True
        elif kind == TXT and klass == CLASS_IN:
            if owner == _TO_QUESTION or owner.lower() == qname.lower():
                records.append(b"".join(_character_strings(rdata)).decode("utf-8", errors="replace"))
            else:
                unclear = True
    for _ in range(authority):
        position = _skip_record(data, position)[0]
    rcode = flags & 0x000F
    for _ in range(additional):
        position, kind, ttl = _skip_record(data, position)
        if kind == OPT:
            rcode |= (ttl >> 24) << 4  # RFC 6891 6.1.3: the upper 8 bits of the extended rcode
    if position != len(data):
        raise _Malformed  # trailing octets: not a message we understand
    return TXTReply(flags, rcode, records, unclear)


def _skip_name(data: bytes, position: int) -> int:
    """The position after the name at `position`: its labels, up to the root or a pointer."""
    while True:
        length = data[position]
        if length == 0:
            return position + 1
        if length & 0xC0 == 0xC0:
            if position + 2 > len(data):
                raise _Malformed
            return position + 2
        if length & 0xC0:
            raise _Malformed  # the label types 01 and 10 are not in use
        position += 1 + length
        if position >= len(data):
            raise _Malformed


def _skip_record(data: bytes, position: int) -> tuple[int, int, int]:
    """(position after the record at `position`, its type, its TTL)."""
    position = _skip_name(data, position)
    kind, _klass, ttl, length = struct.unpack_from("!HHIH", data, position)
    _rdata(data, position + 10, length)
    return position + 10 + length, kind, ttl


def _rdata(data: bytes, start: int, length: int) -> bytes:
    if start + length > len(data):
        raise _Malformed
    return data[start : start + length]


def _character_strings(rdata: bytes) -> list[bytes]:
    """A TXT record's character-strings: each a length octet and that many octets (RFC 1035 3.3.14)."""
    strings = []
    position = 0
    while position < len(rdata):
        length = rdata[position]
        if position + 1 + length > len(rdata):
            raise _Malformed
        strings.append(rdata[position + 1 : position + 1 + length])
        position += 1 + length
    return strings
