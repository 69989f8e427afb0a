"""app/web/mailview.py: hostile and malformed messages become bounded plain text, never an error."""

from __future__ import annotations

from pathlib import Path

from app.store.content import FileMessages
from app.web import mailview
from app.web.mailview import shown_message


def shown(tmp_path: Path, content: bytes) -> mailview.ShownMessage:
    (tmp_path / "message").write_bytes(content)
    return shown_message(FileMessages(tmp_path), "message")


def test_headers_are_unfolded_and_decoded(tmp_path: Path) -> None:
    message = shown(
        tmp_path,
        b"Subject: =?utf-8?q?Caf=C3=A9?= and\r\n  more\r\nFrom: =?x-unknown?q?odd?= <a@example.net>\r\n"
        b"X-Raw: caf\xe9 \xff\r\nAuthentication-Results: mx.example.org;\r\n spf=pass\r\n\r\nHello\r\n",
    )
    assert message.headers == [
        ("Subject", "Café and  more"),
        ("From", "=?x-unknown?q?odd?= <a@example.net>"),  # an unknown charset: kept as sent
        ("X-Raw", "caf\ufffd \ufffd"),  # 8-bit bytes that are not UTF-8
        ("Authentication-Results", "mx.example.org; spf=pass"),
    ]
    assert message.authentication_results == ["mx.example.org; spf=pass"]
    assert (message.body, message.body_is_html, message.truncated) == ("Hello\n", False, False)


def test_the_text_part_is_preferred_and_an_unknown_charset_read_as_utf8(tmp_path: Path) -> None:
    message = shown(
        tmp_path,
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n"
        b"--b\r\nContent-Type: text/plain; charset=x-nonsense\r\n\r\ncaf\xc3\xa9 \xff\r\n"
        b'--b\r\nContent-Type: application/pdf; name="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="\r\n'
        b'Content-Disposition: attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="\r\n'
        b"\r\nJVBE\r\n--b--\r\n",
    )
    assert message.body == "café \ufffd" and not message.body_is_html
    assert message.other_parts == ["text/html", "application/pdf résumé.pdf"]


def test_an_html_only_message_is_its_source_text(tmp_path: Path) -> None:
    message = shown(tmp_path, b"Content-Type: text/html\r\n\r\n<script>alert(1)</script>\r\n")
    assert (message.body, message.body_is_html) == ("<script>alert(1)</script>\n", True)


def test_a_large_message_is_cut(tmp_path: Path) -> None:
    body = b"x" * 100 + b"\r\n"
    message = shown(tmp_path, b"Subject: big\r\n\r\n" + body * (mailview.MAX_READ_BYTES // len(body) + 10))
    assert message.truncated
    assert len(message.body) == mailview.MAX_TEXT_CHARS
