"""Properties of SMTP command and address parsing: the path parser of app/smtpserver/protocol.py
(`_getaddr`, with its SIMPLE_PATH fast path), the address check of app/smtpserver/handler.py, and a
real session on loopback that is sent hostile MAIL and RCPT arguments."""

from __future__ import annotations

import re

from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.smtpserver.handler import address_problem
from app.smtpserver.protocol import SIMPLE_PATH, PostwardenSMTP
from tests.property.fields import check_field
from tests.property.strategies import address, domain, hostile_text, joined, numberish
from tests.support.smtpfixtures import LineClient, ThreadedSMTP, stored_messages

PATH_PARTS = ("<", ">", "<>", "@", '"', "\\", ".", " ", "\t", "[", "]", ":", ",", "IPv6:", "@a,@b:", "(", ")")
path_argument = st.one_of(
    address.map("<{}>".format),
    joined(st.one_of(st.sampled_from(PATH_PARTS), address, hostile_text), st.just("")),
)
parameters = joined(
    st.one_of(
        st.sampled_from(("BODY=8BITMIME", "BODY=7BIT", "SMTPUTF8", "SIZE=100", "X=", "=", "RET=HDRS")),
        hostile_text,
    ),
    st.just(" "),
)
argument = st.one_of(path_argument, st.builds("{} {}".format, path_argument, parameters), hostile_text)


@given(argument)
@example("<")  # the stdlib's parser raised IndexError (451 Internal error in a session)
@example("<a@b.example>\r\nRCPT TO:<c@d.example>")
def test_path_parser_returns_an_address_or_refuses(protocol: PostwardenSMTP, arg: str) -> None:
    address, rest = protocol._getaddr(arg)
    assert (address, rest) == (None, None) or (isinstance(address, str) and isinstance(rest, str))


@given(argument)
@example("<a@b.example> (comment) SIZE=1")
@example("<a@b.example> \x1fSIZE=1")
def test_fast_path_reads_paths_as_aiosmtpd_does(protocol: PostwardenSMTP, arg: str) -> None:
    """SIMPLE_PATH only skips the full parser: where it matches, the full parser finds the same address
    and the same parameters. aiosmtpd strips the argument before parsing it, as done here, and splits
    the rest on white space (str.split: controls such as \\x1f too). Its RFC 5322 parser also drops
    comments after the path, which RFC 5321 paths do not have: the fast path leaves them in the
    parameters, which are then refused (501)."""
    arg = arg.strip()
    if SIMPLE_PATH.match(arg):
        ours, theirs = protocol._getaddr(arg), SMTP._getaddr(protocol, arg)
        assert ours[0] == theirs[0]
        if "(" not in (ours[1] or ""):
            assert (ours[1] or "").split() == (theirs[1] or "").split()


@given(hostile_text, st.booleans(), st.sampled_from(("5.1.7", "5.1.3")))
@example("\udcff@example.org", True, "5.1.7")  # aiosmtpd's surrogateescape for an invalid UTF-8 octet
@example("a\u2028b@example.org", True, "5.1.3")
def test_address_check_lets_through_only_safe_addresses(text: str, smtputf8: bool, code: str) -> None:
    """An address that passes may be logged, stored and put into headers as it is."""
    problem = address_problem(text, smtputf8, code)
    if problem is not None:
        assert re.match(rf"553 ({code}|5\.6\.7) ", problem) and problem.isprintable()
        return
    local, at, domain = text.rpartition("@")
    assert local and at and domain
    assert text.isprintable() and (smtputf8 or text.isascii())
    assert len(text.encode()) <= 254


# A real session. Each example opens a connection (the error budget closes sessions after a few
# errors), greets, and sends one MAIL and one RCPT line with hostile arguments, then NOOP.

REPLY = re.compile(r"[2-5][0-9][0-9]([ -].*)?")
INTERNAL_ERROR = "451 4.3.0"
octets = st.one_of(
    argument.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
).map(lambda data: data.replace(b"\n", b""))  # a LF would end the line: a second command, not this one


def assert_reply(reply: str) -> None:
    assert reply, "the server closed the connection"
    for line in reply.split("\n"):
        assert REPLY.fullmatch(line) and line.isprintable(), line
    assert not reply.startswith(INTERNAL_ERROR), reply


@settings(max_examples=max(10, settings().max_examples // 4))
@given(octets, octets, st.booleans())
@example(b"<", b"<admin@example.org>", False)
@example(b"<\xff@example.org> SMTPUTF8", b"<admin@example.org>", True)
def test_session_answers_hostile_paths_with_a_reply(
    smtp_server: ThreadedSMTP, sender: bytes, recipient: bytes, smtputf8: bool
) -> None:
    client = LineClient(smtp_server.inbound_port, timeout=5.0)
    try:
        assert_reply(client.command("EHLO client.example"))
        assert_reply(client.command(b"MAIL FROM:" + sender + (b" SMTPUTF8" if smtputf8 else b"")))
        assert_reply(client.command(b"RCPT TO:" + recipient))
        assert client.command("NOOP").startswith("250")
    finally:
        client.close()


@settings(max_examples=max(10, settings().max_examples // 4))
@given(st.lists(st.builds("{}={}".format, st.sampled_from(("SIZE", "BODY", "size")), numberish), max_size=3))
@example(["SIZE=\u00b2"])  # str.isdigit() is true, int() raised ValueError (451 Internal error)
def test_session_answers_hostile_mail_parameters_with_a_reply(
    smtp_server: ThreadedSMTP, params: list[str]
) -> None:
    client = LineClient(smtp_server.inbound_port, timeout=5.0)
    try:
        assert_reply(client.command("EHLO client.example"))
        assert_reply(client.command(" ".join(["MAIL FROM:<a@client.example>", *params])))
        assert client.command("NOOP").startswith("250")
    finally:
        client.close()


# A whole transaction: an accepted sender (the strict check lets quoted and UTF-8 local parts through)
# and a hostile From and Subject reach SPF macros, DMARC, and the three header fields we prepend.

quoted_local = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\')
)
local_part = st.one_of(
    st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}", fullmatch=True),
    quoted_local.filter(bool).map('"{}"'.format),
    st.text(alphabet=st.characters(min_codepoint=0xA0, max_codepoint=0x2FF), min_size=1, max_size=10),
)
header_text = hostile_text.map(lambda text: re.sub(r"[\r\n\0]", "", text))


@settings(max_examples=max(5, settings().max_examples // 10))
@given(st.builds("{}@{}".format, local_part, domain), header_text, header_text)
def test_transaction_headers_stay_safe_whatever_the_sender(
    smtp_server: ThreadedSMTP, sender: str, from_value: str, subject: str
) -> None:
    message = f"From: {from_value}\r\nSubject: {subject}\r\nMessage-ID: <p@client.example>\r\n\r\nHi.\r\n"
    data = message.encode("utf-8", "surrogatepass")
    client = LineClient(smtp_server.inbound_port, timeout=10.0)
    try:
        assert client.command("EHLO client.example").startswith("250")
        mail = client.command(f"MAIL FROM:<{sender}>" + ("" if sender.isascii() else " SMTPUTF8"))
        assert_reply(mail)
        if not mail.startswith("250"):
            return
        assert client.command("RCPT TO:<admin@example.org>").startswith("250")
        assert client.command("DATA").startswith("354")
        reply = client.command(data + b".")
    finally:
        client.close()
    assert_reply(reply)
    if reply.startswith("250"):
        content = stored_messages(smtp_server)[-1].content
        assert content.endswith(data)
        prepended = content[: -len(data)]
        assert prepended.endswith(b"\r\n")
        fields = [field + b"\r\n" for field in re.split(rb"\r\n(?=[^ \t])", prepended[:-2])]
        assert len(fields) == 3
        check_field(fields[0], "Authentication-Results")
        assert check_field(fields[1], "X-Postwarden-Reason") == ["X-Postwarden-Reason: no-bad-signals"]
        check_field(fields[2], "Received")
