"""`postwarden ...`: one click group; each area registers its commands from its own module."""

from __future__ import annotations

from app.cli import (  # noqa: F401  (each registers its commands on `main`)
    account,
    config_cmd,
    dmarc,
    imap,
    inspect,
    message,
    queue,
    reports,
    server,
    setup,
    systemd,
    tls,
    tlsrpt,
    web,
)
from app.cli.common import main

__all__ = ["main"]
