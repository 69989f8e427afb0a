"""`postwarden ...`: one click group; each area registers its commands from its own module."""

from __future__ import annotations

from app.cli import config_cmd  # noqa: F401  (registers its commands on `main`)
from app.cli.common import main

__all__ = ["main"]
