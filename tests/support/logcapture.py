"""Capturing what a job logs, each line with the cid (app/logs.py) in effect when it was logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from app.logs import current_cid, fields_text


class CidLog(logging.Handler):
    """The lines logged, as (cid, level, message with its fields as the text format writes them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str | None, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((current_cid.get(), record.levelno, record.getMessage() + fields_text(record)))

    def messages(self, text: str = "") -> list[str]:
        return [m for _, _, m in self.lines if text in m]


@contextmanager
def captured(logger_name: str) -> Iterator[CidLog]:
    """INFO and above of `logger_name` and its children, for the duration."""
    handler = CidLog()
    logger = logging.getLogger(logger_name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
