"""ENVELOPE from hostile and ordinary headers: raw values, defaults, 8-bit octets in literals."""

from __future__ import annotations

from app.imap.envelope import envelope


def test_missing_fields_are_nil_and_8bit_goes_out_as_a_literal() -> None:
    found = envelope(b"Subject: caf\xc3\xa9\r\n folded\r\n\r\nbody")
    assert found == b"(NIL {12}\r\ncaf\xc3\xa9 folded NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_groups_are_shown_with_their_markers() -> None:
    """RFC 9051 7.5.2: (NIL NIL "name" NIL) starts a group, (NIL NIL NIL NIL) ends it; a ':' or ';'
    in a quoted name, a comment or an address in <...> is not group syntax."""
    found = envelope(
        b'To: undisclosed-recipients:;\r\nCc: "x:y;" <a@x.example>, Team: b@y.example (c;d),'
        b" <@r.example:c@z.example>; d@w.example\r\nBcc: Open: e@v.example\r\n\r\n"
    )
    start, end = b'(NIL NIL "Team" NIL)', b"(NIL NIL NIL NIL)"
    assert b'((NIL NIL "undisclosed-recipients" NIL)' + end + b")" in found
    assert (
        b'(("x:y;" NIL "a" "x.example")'
        + start
        + b'("c;d" NIL "b" "y.example")(NIL NIL "c" "z.example")'
        + end
        + b'(NIL NIL "d" "w.example"))'
    ) in found
    assert b'((NIL NIL "Open" NIL)(NIL NIL "e" "v.example")' + end + b")" in found  # closed at the end


def test_quotes_in_names_are_escaped_and_sender_defaults_to_from() -> None:
    found = envelope(b'From: "A \\"q\\" B" <a@x.example>\r\nSender: s@y.example\r\n\r\n')
    assert found == (
        b'(NIL NIL (("A \\"q\\" B" NIL "a" "x.example")) ((NIL NIL "s" "y.example"))'
        b' (("A \\"q\\" B" NIL "a" "x.example")) NIL NIL NIL NIL NIL)'
    )


def test_a_header_with_thousands_of_addresses_is_cut() -> None:
    many = b", ".join(b"u%d@x.example" % n for n in range(5000))
    assert envelope(b"To: " + many + b"\r\n\r\n").count(b'"x.example"') == 1000
