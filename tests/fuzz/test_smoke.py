"""The fuzz runner works: its smoke mode runs every property target a few times and reports each."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.fuzz.run import SMOKE_EXAMPLES

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_fuzzes_every_property_and_reports_figures() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = re.findall(r"^(test_\w+::test_\w+) +(\d+) +[\d.]+ s +\d+/s  ok$", run.stdout, re.MULTILINE)
    names = {name for name, _ in rows}
    assert {
        "test_dmarc_record::test_parse_raises_only_its_own_error",
        "test_smtp_commands::test_transaction_headers_stay_safe_whatever_the_sender",
    } <= names
    assert all(int(examples) >= min(SMOKE_EXAMPLES, 3) for _, examples in rows), rows
    assert re.search(r"^\d+ targets, \d+ examples in \d+ s, 0 failed$", run.stdout, re.MULTILINE)
