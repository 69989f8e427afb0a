"""Log hardening (issue 8): attacker text cannot forge a log line, and a repeated line cannot flood."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.logs import FIELD_LIMIT, RATE_LIMITED, EscapingFormatter, RepeatLimiter, escape_control, fields

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "evil\r\n2026-01-01 00:00:00,000 INFO app forged\x1b[2J\x85\u2028\u2029\x00\x7f\tend"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logged(clock: Clock) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose lines go through the text formatter and a limiter (burst 3, window 10 s)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RepeatLimiter(handler, burst=3, window=10.0, clock=clock))
    logger = logging.getLogger("test.logs.hardening")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, out
    logger.handlers[:] = []


def test_escape_control_characters() -> None:
    assert escape_control("plain text, ünïcödé ok") == "plain text, ünïcödé ok"
    assert escape_control(HOSTILE) == (
        "evil\\r\\n2026-01-01 00:00:00,000 INFO app forged\\x1b[2J\\x85\\u2028\\u2029\\x00\\x7f\\tend"
    )


def test_bidirectional_controls_are_escaped() -> None:
    """U+202E and friends reorder what a terminal shows ("invoice\u202efdp.exe" reads as ...exe.pdf)."""
    for char in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069":
        assert escape_control(f"a{char}b") == f"a\\u{ord(char):04x}b"


def test_text_lines_escape_attacker_text(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    logger.info("helo=%s", HOSTILE)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, "one record, one line"
    assert lines[0].startswith("INFO test.logs.hardening helo=evil\\r\\n2026")
    assert all(c.isprintable() for c in lines[0])


def test_tracebacks_stay_readable_and_cannot_forge_a_line(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    try:
        raise ValueError(f"bad input {HOSTILE}")
    except ValueError:
        logger.exception("session error from %s", "192.0.2.1")
    first, *traceback = out.getvalue().splitlines()
    assert first == "ERROR test.logs.hardening session error from 192.0.2.1"
    assert traceback[0] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") for line in traceback), "only the record's own line is unindented"
    assert any(line.startswith("    ValueError: bad input evil\\r") for line in traceback)
    assert all(c.isprintable() for line in traceback for c in line)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_setup_logging_escapes_in_both_formats(fmt: str) -> None:
    program = (
        "import logging; from app.logs import setup_logging\n"
        f"setup_logging('info', {fmt!r})\n"
        f"logging.getLogger('app.x').warning('from %s', {HOSTILE!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, timeout=30, check=True
    )
    lines = result.stderr.decode("utf-8").splitlines()
    assert len(lines) == 1 and lines[0].isascii() and lines[0].isprintable()
    if fmt == "json":
        assert json.loads(lines[0])["message"] == f"from {HOSTILE}", "JSON keeps the text, escaped"
    else:
        assert "from evil\\r\\n2026-01-01" in lines[0]


def logged_with_fields(fmt: str) -> str:
    """One line with fields, hostile and overlong ones among them, logged by `setup_logging`."""
    program = (
        "import logging; from app.logs import fields, setup_logging\n"
        f"setup_logging('info', {fmt!r})\n"
        "extra = fields(queue_id=7, domain='example.net', result='delivered', "
        f"helo={HOSTILE!r}, reply='250 2.0.0 OK queued', long='x' * 5000)\n"
        "logging.getLogger('app.x').info('delivery %s', 'delivered', extra=extra)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, timeout=30, check=True
    )
    (line,) = result.stderr.decode("utf-8").splitlines()
    assert line.isascii() and line.isprintable()
    return line


def test_json_lines_carry_fields_as_keys() -> None:
    record = json.loads(logged_with_fields("json"))
    assert record["message"] == "delivery delivered", "the fields are not in the text"
    assert (record["queue_id"], record["domain"], record["result"]) == (7, "example.net", "delivered")
    assert record["helo"] == HOSTILE, "escaped by the encoder, read back whole"
    assert record["long"] == "x" * FIELD_LIMIT
    assert record["cid"] == "-" and "fields" not in record


def test_text_lines_show_fields_after_the_message() -> None:
    line = logged_with_fields("text")
    assert "delivery delivered queue_id=7 domain=example.net result=delivered helo='evil\\r\\n2026" in line
    assert f" reply='250 2.0.0 OK queued' long={'x' * FIELD_LIMIT}" in line and line.endswith("x")


def test_repeated_lines_are_summed_up(logged: tuple[logging.Logger, io.StringIO], clock: Clock) -> None:
    logger, out = logged
    for i in range(10):
        logger.warning("accept() failed on %s (%d)", "port 25", i)
    logger.error("another template")
    assert out.getvalue().splitlines() == [
        "WARNING test.logs.hardening accept() failed on port 25 (0)",
        "WARNING test.logs.hardening accept() failed on port 25 (1)",
        "WARNING test.logs.hardening accept() failed on port 25 (2)",
        "ERROR test.logs.hardening another template",
    ]
    clock.now += 10.0
    logger.warning("accept() failed on %s (%d)", "port 25", 10)
    assert out.getvalue().splitlines()[4:] == [
        "WARNING test.logs.hardening suppressed 7 similar lines in 10 s (after the first 3): "
        "accept() failed on %s (%d)",
        "WARNING test.logs.hardening accept() failed on port 25 (10)",
    ]


def test_info_lines_are_limited_only_when_asked(
    logged: tuple[logging.Logger, io.StringIO], clock: Clock
) -> None:
    logger, out = logged
    for i in range(5):
        logger.info("transaction %d", i)
    for i in range(5):
        logger.info("refused connection %d", i, extra=RATE_LIMITED)
    text = out.getvalue()
    assert text.count("transaction") == 5, "the per-message audit line is never dropped"
    assert text.count("refused connection") == 3
    clock.now += 11.0
    logger.info("transaction %d", 5)  # any later line brings the summary out
    assert out.getvalue().splitlines()[-2:] == [
        "INFO test.logs.hardening suppressed 2 similar lines in 10 s (after the first 3): "
        "refused connection %d",
        "INFO test.logs.hardening transaction 5",
    ]


def test_field_values_are_shown_alike_every_time(logged: tuple[logging.Logger, io.StringIO]) -> None:
    """Shown values are cached (app/logs.py `_shown_text`): a repeated value, hostile or not, is
    written as the first time."""
    logger, out = logged
    for _ in range(2):
        logger.info("x", extra=fields(domain="example.net", helo=HOSTILE, n=7, flag=True, empty=""))
    first, second = out.getvalue().splitlines()
    assert first == second
    assert first.startswith("INFO test.logs.hardening x domain=example.net helo='evil\\r\\n2026")
    assert first.endswith(" n=7 flag=True empty=''") and first.isprintable()
