"""The IMAP command parser on well-formed and hostile input: every malformed command is a ParseError
with our own text (what the session sends in a tagged BAD), never another exception."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.imap.parser import (
    MAX_DEPTH,
    FetchItem,
    ParseError,
    Section,
    SequenceSet,
    parse_command,
    tag_of,
)
from app.imap.session import _COMMANDS


def test_every_parsed_command_has_a_handler() -> None:
    from app.imap.parser import _PARSERS

    assert set(_PARSERS) == set(_COMMANDS)


@pytest.mark.parametrize(
    ("data", "user", "password"),
    [
        (b"a LOGIN alice secret", b"alice", b"secret"),
        (b'a LOGIN "al ice" "p\\"w\\\\"', b"al ice", b'p"w\\'),
        (b"a LOGIN {4}\r\nal\xc3\xa9 {2+}\r\n\r\n", b"al\xc3\xa9", b"\r\n"),  # 8-bit and CRLF in literals
        (b'a login "" ""', b"", b""),
    ],
)
def test_login_strings(data: bytes, user: bytes, password: bytes) -> None:
    command = parse_command(data)
    assert (command.tag, command.name, command.args) == ("a", "LOGIN", {"user": user, "password": password})


def test_fetch_items_sections_partials_and_macros() -> None:
    command = parse_command(
        b"t1 UID FETCH 1:*,7,9:3 (UID flags BODY.PEEK[1.2.HEADER.FIELDS.NOT (X-A x-b)]<10.20>"
        b" RFC822.HEADER body[])"
    )
    assert command.name == "UID FETCH"
    assert command.args["sequence"] == SequenceSet(((1, None), (7, 7), (9, 3)))
    assert command.args["items"] == [
        FetchItem("UID"),
        FetchItem("FLAGS"),
        FetchItem("BODY", Section((1, 2), "HEADER.FIELDS.NOT", ("X-A", "X-B")), peek=True, partial=(10, 20)),
        FetchItem("RFC822.HEADER"),
        FetchItem("BODY", Section(), peek=False),
    ]
    assert command.args["items"][2].response_name() == "BODY[1.2.HEADER.FIELDS.NOT (X-A X-B)]<10>"  # type: ignore[index]
    assert [i.name for i in parse_command(b"t FETCH 1 FULL").args["items"]] == [  # type: ignore[attr-defined]
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
    ]


def test_sequence_sets_pick_existing_numbers() -> None:
    uids = [3, 5, 8, 13]
    assert SequenceSet(((1, None),)).pick(uids) == uids
    assert SequenceSet(((20, None),)).pick(uids) == [13]  # 20:* is 13:20 when 13 is the largest
    assert SequenceSet(((4, 8), (13, 13))).pick(uids) == [5, 8, 13]
    assert SequenceSet(((None, None),)).pick([]) == []
    assert SequenceSet(((2, 9), (None, None))).largest_named() == 9


def test_store_forms() -> None:
    assert parse_command(b"s STORE 2:4 -FLAGS.SILENT \\Seen $Junk").args == {
        "sequence": SequenceSet(((2, 4),)),
        "mode": "remove",
        "silent": True,
        "flags": ["\\SEEN", "$JUNK"],
        "unchangedsince": None,
    }
    assert parse_command(b"s UID STORE 1 FLAGS ()").args["mode"] == "replace"


def test_condstore_modifiers() -> None:
    assert (
        parse_command(b"s STORE 1 (UNCHANGEDSINCE 9223372036854775807) +FLAGS \\Seen").args["unchangedsince"]
        == 2**63 - 1
    )
    assert parse_command(b"f FETCH 1:* (FLAGS) (CHANGEDSINCE 12)").args["changedsince"] == 12
    assert parse_command(b"e EXAMINE INBOX (CONDSTORE)").args["condstore"] is True
    assert parse_command(b"e SELECT INBOX").args["condstore"] is False
    assert parse_command(b"q SEARCH MODSEQ 5 SEEN").args["keys"] == [("MODSEQ", 5), ("SEEN",)]
    for bad, why in [
        (b"s STORE 1 (UNCHANGEDSINCE 9223372036854775808) FLAGS ()", "larger than"),
        (b"f FETCH 1 FLAGS (CHANGEDSINCE)", "a space"),
        (b"e SELECT INBOX (QRESYNC (1 2))", "CONDSTORE"),
        (b'q SEARCH MODSEQ "/flags/x" sometimes 5', "priv, shared or all"),
    ]:
        with pytest.raises(ParseError, match=why):
            parse_command(bad)


HOSTILE = [
    (b"", "a tag"),
    (b"a", "a space"),
    (b"+a NOOP", "a tag"),
    (b"a NOOP extra", "unexpected text"),
    (b'a LOGIN "unterminated', "unterminated quoted string"),
    (b'a LOGIN "bad \\escape" x', "only"),
    (b'a LOGIN "nul\x00" x', "NUL"),
    (b"a LOGIN n\x00ul x", "NUL"),
    (b"a LOGIN {3}\r\na\x00b x", "NUL"),
    (b"a LOGIN \xff x", "8-bit"),
    (b"a LOGIN {99}\r\nshort", "shorter than announced"),
    (b"a LOGIN {99999999999}\r\n", "malformed literal"),
    (b"a LOGIN {-1}\r\nx y", "malformed literal"),
    (b"a LOGIN {1}x y", "malformed literal"),
    (b"a ID " + b"(" * (MAX_DEPTH + 1) + b")" * (MAX_DEPTH + 1), "nest"),
    (b"a ID (a b", "unterminated list"),
    (b"a FETCH 0 FLAGS", "must not be 0"),
    (b"a FETCH 1: FLAGS", "sequence set"),
    (b"a FETCH :1 FLAGS", "sequence set"),
    (b"a FETCH 1,,2 FLAGS", "sequence set"),
    (b"a FETCH 4294967296 FLAGS", "larger than"),
    (b"a FETCH 1 ()", "at least one"),
    (b"a FETCH 1 (ALL)", "inside a list"),
    (b"a FETCH 1 BODY[", "section"),
    (b"a FETCH 1 BODY[1.]", "part number's dot"),
    (b"a FETCH 1 BODY[0]", "must not be 0"),
    (b"a FETCH 1 BODY[MIME]", "part number"),
    (b"a FETCH 1 BODY[BOGUS]", "unknown section"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "must name a field"),
    (b"a FETCH 1 BODY[HEADER.FIELDS (A:B)]", "without a colon"),
    (b"a FETCH 1 BODY[]<1>", "."),
    (b"a FETCH 1 BODY[]<1.0>", "must not be 0"),
    (b"a FETCH 1 BINARY[1.TEXT]", "a part number"),
    (b"a FETCH 1 BINARY.SIZE[1]<0.5>", "unexpected text"),
    (b"a FETCH 1 X-GM-LABELS", "unknown FETCH data item"),
    (b"a STORE 1 FLAGZ (\\Seen)", "FLAGS"),
    (b"a STORE 1 +FLAGS (\\)", "a flag"),
    (b'a SELECT ""', "must not be empty"),
    (b"a SELECT {3}\r\n\xff\xfe\xfd", "not UTF-8"),
    (b"a SELECT {2}\r\na\x01", "control characters"),
    (b"a STATUS INBOX (MESSAGES BOGUS)", "STATUS items"),
    (b"a UID", "a space"),
    (b"a UID LOGOUT", "unknown command"),
    (b"a AUTHENTICATE PLAIN !!", "unexpected text"),
    (b"a \xc3\xa9", "8-bit"),
    (b"a SEARCH", "a space"),
    (b"a SEARCH OR SEEN", "a space"),
    (b"a SEARCH " + b"(" * 20 + b"ALL" + b")" * 20, "nest"),
    (b"a SEARCH " + b"NOT " * 20 + b"ALL", "nest"),
    (b"a SEARCH SINCE 1-Foo-2026", "no such date"),
    (b"a SEARCH LARGER x", "a size"),
    (b"a SEARCH FUZZY x", "not supported"),
]


@pytest.mark.parametrize(("data", "reason"), HOSTILE)
def test_hostile_commands_are_parse_errors_naming_the_problem(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=None) as raised:
        parse_command(data)
    assert reason in str(raised.value)
    assert str(raised.value).isascii() and "\n" not in str(raised.value)  # fit for a BAD line


def test_unknown_command_names_are_cut_in_the_answer() -> None:
    with pytest.raises(ParseError) as raised:
        parse_command(b"a " + b"X" * 10_000)
    assert len(str(raised.value)) < 100


def test_tag_of() -> None:
    assert tag_of(b"a1 NOOP") == "a1"
    assert tag_of(b"a+ NOOP") is None and tag_of(b"a1") is None and tag_of(b"") is None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_any_octets_parse_or_fail_with_a_parse_error(data: bytes) -> None:
    for prefix in (b"", b"a FETCH ", b"a LOGIN ", b"a STORE 1 ", b"a UID FETCH 1:* "):
        try:
            parse_command(prefix + data)
        except ParseError as e:
            assert str(e).isascii() and "\r" not in str(e) and "\n" not in str(e)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 60), unique=True).map(sorted),
    st.lists(
        st.tuples(st.none() | st.integers(1, 70), st.none() | st.integers(1, 70)), min_size=1, max_size=6
    ),
)
def test_pick_is_the_members_inside_any_range(
    available: list[int], ranges: list[tuple[int | None, int | None]]
) -> None:
    largest = available[-1] if available else 0

    def inside(n: int, first: int | None, last: int | None) -> bool:
        low, high = sorted((largest if first is None else first, largest if last is None else last))
        return low <= n <= high

    expected = [n for n in available if any(inside(n, a, b) for a, b in ranges)]
    assert SequenceSet(tuple(ranges)).pick(available) == expected


def test_pick_over_many_ranges_and_a_large_mailbox_is_quick() -> None:
    command = parse_command(
        b"a UID FETCH " + b",".join(b"%d:%d" % (n, n + 3) for n in range(1, 60_000, 5)) + b" FLAGS"
    )
    sequence: SequenceSet = command.args["sequence"]  # type: ignore[assignment]
    started = time.monotonic()
    assert len(sequence.pick(list(range(1, 50_001)))) == 40_000
    assert time.monotonic() - started < 1.0


def test_search_text_keys_and_return_options_parse() -> None:
    command = parse_command(b'a SEARCH RETURN (MIN COUNT) CHARSET UTF-8 HEADER X-Spam "YES" BODY {3}\r\nAbc')
    assert command.args == {
        "keys": [("HEADER", ("X-SPAM", "yes")), ("BODY", "abc")],
        "return": ["MIN", "COUNT"],
    }
    assert parse_command(b"a UID SEARCH RETURN () ALL").args["return"] == ["ALL"]
    assert parse_command(b"a SEARCH ALL").args["return"] is None


def test_extended_list_and_mailbox_commands_parse() -> None:
    command = parse_command(
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" %) RETURN (CHILDREN STATUS (MESSAGES))'
    )
    assert command.args == {
        "select": ["SUBSCRIBED", "RECURSIVEMATCH"],
        "reference": "",
        "patterns": ["INBOX", "%"],
        "return": {"CHILDREN": [], "STATUS": ["MESSAGES"]},
    }
    assert parse_command(b"a RENAME inbox Saved").args == {"mailbox": "INBOX", "new": "Saved"}
    for bad in (b'a LIST () "" ()', b'a LIST "" * RETURN (STATUS ())', b'a LIST "" * EXTRA', b"a CREATE"):
        with pytest.raises(ParseError):
            parse_command(bad)
