"""A stored message as the account web UI shows it: its header fields decoded (RFC 2047) to plain
text, its Authentication-Results, and one text part, all bounded in size.

Everything here comes from whoever sent the message. It leaves as plain strings for the templates,
which escape them (Jinja autoescape; never `|safe`); an HTML part is shown as its source text, never
rendered, so no script, style or remote image of a message reaches the browser.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser

from app.store.content import StoredContent

# A message larger than this is shown from its start (it stays whole in the store).
MAX_READ_BYTES = 2 * 1024 * 1024
MAX_TEXT_CHARS = 200_000
MAX_HEADER_FIELDS = 200
_FOLD = re.compile(r"\r?\n(?=[ \t])")


@dataclass(frozen=True)
class ShownMessage:
    headers: list[tuple[str, str]]  # every field (up to MAX_HEADER_FIELDS), in order, decoded
    authentication_results: list[str]
    body: str  # the text/plain part, else the text/html part's source; "" without either
    body_is_html: bool
    truncated: bool  # the file or the text was cut to its limit
    other_parts: list[str]  # the other leaf parts: content type and file name


def shown_message(content: StoredContent, path: str) -> ShownMessage:
    """The message stored at `path`, read up to MAX_READ_BYTES (OSError if it is gone)."""
    raw = content.read(path, MAX_READ_BYTES + 1)
    message = BytesParser(policy=policy.default).parsebytes(raw[:MAX_READ_BYTES])
    headers = [(text(name), decoded_header(value)) for name, value in message.raw_items()]
    body_part = _body_part(message)
    body = _part_text(body_part) if body_part is not None else ""
    return ShownMessage(
        headers=headers[:MAX_HEADER_FIELDS],
        authentication_results=[v for n, v in headers if n.lower() == "authentication-results"],
        body=body[:MAX_TEXT_CHARS],
        body_is_html=body_part is not None and body_part.get_content_type() == "text/html",
        truncated=len(raw) > MAX_READ_BYTES or len(body) > MAX_TEXT_CHARS,
        other_parts=[_describe(part) for part in message.walk() if _is_other_leaf(part, body_part)],
    )


def decoded_header(value: str) -> str:
    """A header field's value unfolded, with its encoded words (RFC 2047) decoded; a malformed one
    is kept as sent."""
    unfolded = _FOLD.sub("", value)
    if "=?" in unfolded:
        with suppress(ValueError, LookupError, UnicodeDecodeError):  # malformed: kept as sent
            unfolded = str(make_header(decode_header(unfolded)))
    return text(unfolded)


def text(value: str) -> str:
    """`value` as text that can be encoded for the page: the parser keeps undecodable 8-bit bytes
    as surrogates, which become U+FFFD here."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _body_part(message: EmailMessage) -> MIMEPart | None:
    # get_body reads the sender's MIME structure; the stdlib parser has raised on hostile structures
    # before, and a page must still show the headers then.
    try:
        return message.get_body(preferencelist=("plain", "html"))
    except Exception:
        return None


def _part_text(part: MIMEPart) -> str:
    """The part's text with its lines ending in LF; an unknown charset reads as UTF-8 and undecodable
    bytes as U+FFFD."""
    try:
        content = part.get_content()
    except (LookupError, ValueError, KeyError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return text(content).replace("\r\n", "\n") if isinstance(content, str) else ""


def _is_other_leaf(part: Message, body_part: Message | None) -> bool:
    return not part.is_multipart() and part is not body_part


def _describe(part: Message) -> str:
    name = part.get_filename()
    return text(f"{part.get_content_type()} {decoded_header(name)}" if name else part.get_content_type())
