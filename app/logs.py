"""Logging setup: text or JSON lines, and a correlation id (cid) carried by every line logged in a run."""

from __future__ import annotations

import contextvars
import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

current_cid: contextvars.ContextVar[str | None] = contextvars.ContextVar("cid", default=None)


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


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CidFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(cid)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s cid=%(cid)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
