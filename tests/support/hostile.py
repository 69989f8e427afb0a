"""Hostile text for the issue 8 tests: the control characters every path is swept with, and the pattern
of what must never reach a log line, a database column, an SMTP reply or a command raw."""

from __future__ import annotations

import re

CONTROLS = {
    "CR": "\r",
    "LF": "\n",
    "NUL": "\0",
    "TAB": "\t",
    "SOH": "\x01",
    "ESC": "\x1b",
    "DEL": "\x7f",
    "NEL": "\x85",
    "LS": "\u2028",
}
# An LF ends an SMTP command line wherever it stands (the server reads up to it), so a command cannot
# carry one: the command sweeps leave it out; it is in every DNS and message sweep.
COMMAND_CONTROLS = {name: c for name, c in CONTROLS.items() if c != "\n"}
# C0 (TAB too), DEL, C1, U+2028/2029.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A line of a header section: printable ASCII, and TAB (folding).
CLEAN_HEADER_LINE = re.compile(rb"[\t\x20-\x7e]*")
