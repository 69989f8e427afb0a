"""Logging setup: text or JSON lines, and a correlation id (cid) carried by every line logged in a run.

Log lines carry text from the network (addresses, HELO names, replies); a CR, LF or terminal escape
in it must not forge a line or repaint an operator's terminal. The text format escapes every control
character (C0, DEL, C1, U+2028/2029, the bidi controls) in the line itself and indents each line of a
traceback, so only a record's own first line starts at the left margin; the JSON format is escaped by the JSON
encoder (ensure_ascii). A repeated line (same logger, level and message template) is logged at
most `burst` times a window, then summed up in one line: a fault that fires in a loop (say, accept()
out of file descriptors) must not fill the disk. Warnings and errors are always limited this way;
INFO lines only when logged with `extra=RATE_LIMITED`, since one INFO line per message or session
is the audit trail and must stay whole.

A line's facts go in `extra=fields(...)` (message_id, queue_id, domain, result...), not in its text:
the JSON format makes each a key of its own, the text format writes them after the message as
`key=value` (a value with a space, a quote or a control character as repr writes it); strings are
cut to FIELD_LIMIT.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Any

from pythonjsonlogger.json import JsonFormatter

current_cid: contextvars.ContextVar[str | None] = contextvars.ContextVar("cid", default=None)

# `extra=` for an INFO line that the outside world can repeat at will (one per refused connection).
RATE_LIMITED = {"rate_limited": True}
FIELDS = "fields"  # the record attribute `fields()` sets
FIELD_LIMIT = 512  # characters of a string field that are logged
_QUOTED = re.compile(r"[\s'\"=]")
# C0, DEL, C1, the line and paragraph separators, and the bidirectional controls (which can make a
# terminal show text in another order than it was written, e.g. a file name that hides its extension).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
TRACEBACK_INDENT = "    "
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def new_cid() -> str:
    return secrets.token_hex(6)


@contextmanager
def cid_scope(cid: str | None = None) -> Iterator[str]:
    """Every line logged inside carries this cid (a fresh one unless given)."""
    value = cid or new_cid()
    token = current_cid.set(value)
    try:
        yield value
    finally:
        current_cid.reset(token)


class _CidFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "cid"):
            record.cid = current_cid.get() or "-"
        return True


def fields(**values: object) -> dict[str, dict[str, object]]:
    """`extra=` for a line with these fields (see the module doc)."""
    return {FIELDS: values}


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields of a record, strings cut to FIELD_LIMIT."""
    values: dict[str, object] = getattr(record, FIELDS, {})
    return {k: v[:FIELD_LIMIT] if isinstance(v, str) else v for k, v in values.items()}


def fields_text(record: logging.LogRecord) -> str:
    """The fields as the text format writes them after the message: ` key=value` each (the same
    as writing each of `record_fields`, cut alike; this runs for every delivery and session line)."""
    values: dict[str, object] | None = getattr(record, FIELDS, None)
    if not values:
        return ""
    return "".join([f" {key}={_shown(value)}" for key, value in values.items()])


def _shown(value: object) -> str:
    if type(value) is int:  # digits and a minus sign: nothing to quote (not bool, not a subclass)
        return str(value)
    return _shown_text(value[:FIELD_LIMIT] if isinstance(value, str) else str(value))


# Most field values repeat from line to line (domains, results, relays, TLS); the cache is bounded,
# so values that do not repeat (ids, attacker text) only cycle through it.
@lru_cache(maxsize=1024)
def _shown_text(text: str) -> str:
    return repr(text) if not text or not text.isprintable() or _QUOTED.search(text) else text


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """`text` with each control character written as an escape (\\n, \\x1b, \\u2028)."""
    if text.isprintable():  # the common case, checked in C; isprintable() is False for every control
        return text
    return _CONTROL.sub(_escape_one, text)


def escape_control_in(value: Any) -> Any:
    """`value` with control characters in every string it holds (in tuples, lists, dicts and
    dataclasses, recursively) written as escapes: for pages showing text from the network, where
    HTML escaping alone would pass them through."""
    if isinstance(value, str):
        return escape_control(value)
    if isinstance(value, tuple | list):
        return type(value)(escape_control_in(v) for v in value)
    if isinstance(value, dict):
        return {escape_control_in(k): escape_control_in(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: escape_control_in(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value


def escape_control_lines(text: str) -> str:
    """`text` escaped as by escape_control, line by line: its line breaks kept (a document shown in
    a <pre>)."""
    return "\n".join(escape_control(line) for line in text.replace("\r\n", "\n").split("\n"))


class EscapingFormatter(logging.Formatter):
    """The text format: one line per record, a traceback below it indented (see the module doc)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_control(super().formatMessage(record) + fields_text(record))

    def formatException(self, ei: ExcInfo) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(block: str) -> str:
    # Lines keep their LFs (a traceback must stay readable); other controls are escaped, and the indent
    # keeps an exception message with a LF in it from starting a line that looks like a record.
    return "\n".join(TRACEBACK_INDENT + escape_control(line) for line in block.split("\n"))


@dataclass
class _Window:
    start: float
    count: int = 0
    record: logging.LogRecord | None = None  # the last one suppressed, for the summary's source


class RepeatLimiter(logging.Filter):
    """Per (logger, level, template): the first `burst` records of each `window` seconds pass, the rest
    are counted and reported in one summary line once the window is over (at the next record logged
    through the same handler). Cheap for lines it does not limit: one comparison and one attribute."""

    MAX_TRACKED = 10_000  # templates in one window; beyond that new ones are not limited

    def __init__(
        self,
        handler: logging.Handler,
        *,
        burst: int = 20,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.handler, self.burst, self.window, self.clock = handler, burst, window, clock
        self._windows: dict[tuple[str, int, object], _Window] = {}
        self._next_close = math.inf  # when the oldest window is over
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        limited = record.levelno >= logging.WARNING or getattr(record, "rate_limited", False)
        if not self._windows and not limited:
            return True
        if getattr(record, "suppressed_summary", False):
            return True
        with self._lock:
            summaries = self._close_windows(self.clock())
            allowed = not limited or self._count(record)
        for summary in summaries:
            self.handler.handle(summary)
        return allowed

    def _count(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.msg if isinstance(record.msg, str) else id(record.msg))
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.MAX_TRACKED:
                return True
            window = self._windows[key] = _Window(self.clock())
            self._next_close = min(self._next_close, window.start + self.window)
        window.count += 1
        if window.count <= self.burst:
            return True
        window.record = record
        return False

    def _close_windows(self, now: float) -> list[logging.LogRecord]:
        if now < self._next_close:
            return []
        summaries = []
        for key in [key for key, w in self._windows.items() if now - w.start >= self.window]:
            window = self._windows.pop(key)
            if window.record is not None:
                summaries.append(self._summary(window.record, window.count - self.burst))
        self._next_close = min((w.start for w in self._windows.values()), default=math.inf) + self.window
        return summaries

    def _summary(self, record: logging.LogRecord, suppressed: int) -> logging.LogRecord:
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        summary = logging.LogRecord(
            record.name,
            record.levelno,
            record.pathname,
            record.lineno,
            "suppressed %d similar lines in %g s (after the first %d): %s",
            (suppressed, self.window, self.burst, template),
            None,
        )
        summary.suppressed_summary = True
        summary.cid = getattr(record, "cid", "-")
        return summary


class JsonFieldsFormatter(JsonFormatter):
    """The JSON format: a line's fields are keys of their own (escaped by the encoder)."""

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record.pop(FIELDS, None)
        log_record.update(record_fields(record))


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CidFilter())
    handler.addFilter(RepeatLimiter(handler))
    if fmt == "json":
        handler.setFormatter(
            JsonFieldsFormatter(
                "%(asctime)s %(levelname)s %(name)s %(cid)s %(message)s", json_ensure_ascii=True
            )
        )
    else:
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s cid=%(cid)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
