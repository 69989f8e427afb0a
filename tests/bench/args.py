"""Command-line sizes shared by the benchmarks: `--smoke` picks tiny data that runs in seconds (the
pytest test tests/test_bench_smoke.py runs every benchmark so), a positional number overrides."""

from __future__ import annotations

import sys

SMOKE = "--smoke" in sys.argv


def count(position: int, smoke: int, full: int) -> int:
    """The number at argv[position] if one is given there, else the smoke or the full size."""
    if len(sys.argv) > position and sys.argv[position].isdigit():
        return int(sys.argv[position])
    return smoke if SMOKE else full


def option(name: str) -> int | None:
    """The number after `name` on the command line (`--stored 1000000`), None if `name` is not given."""
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else None
