"""Every benchmark still runs: each with --smoke (tiny data, seconds), its headline as its last line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"
# The last line of each benchmark: the figure its target is about.
HEADLINES = {
    "dmarc_reports.py": r"dmarc reports: job [\d.]+ s, bare GROUP BY [\d.]+ s, ratio [\d.]+, peak RSS \d+ MB",
    "imap.py": r"imap: worst ratio [\d.]+ \([\w:* \[\]]+\), peak RSS \d+ MB \(target < 3x\)",
    "incoming_reports.py": r"incoming reports: \d+ reports/s, \d+ records/s, store ratio [\d.]+, "
    r"peak RSS \d+ MB, query p99 max [\d.]+ ms \(target < 200 ms\)",
    "inbound.py": r"inbound: \d+ msg/s, bare aiosmtpd \d+ msg/s, ratio [\d.]+, "
    r"(postfix \d+ msg/s, ratio to postfix [\d.]+|postfix not run, ratio to postfix n/a), "
    r"cpu [\d.]+ ms/msg \(target ratio to postfix >= [\d.]+, cpu <= [\d.]+ ms\)",
    "metrics.py": r"metrics: [\d.]+ us per message in files, [\d.]+ us in memory, ratio [\d.]+",
    "outbound.py": r"outbound: \d+ msg/s, bare smtplib \d+ msg/s, ratio [\d.]+, lost 0, doubled 0",
    "reputation.py": r"reputation: p99 \w+ [\d.]+ ms, \w+ [\d.]+ ms, ratio [\d.]+ "
    r"\(target p99 < 5 ms, ratio < 1\.5\)",
    "scale.py": r"scale: one node \d+ deliveries/s, two nodes \d+ deliveries/s, ratio [\d.]+, "
    r"lost 0, doubled 0",
    "tls_reports.py": r"tls reports: build [\d.]+ ms/report \(\+ DKIM [\d.]+ ms\), "
    r"RSA-2048 signature [\d.]+ ms, job [\d.]+ s, peak RSS \d+ MB",
}


def test_every_benchmark_has_a_smoke_run() -> None:
    assert sorted(HEADLINES) == sorted(p.name for p in BENCH.glob("*.py") if p.name != "args.py")


@pytest.mark.parametrize("script", sorted(HEADLINES))
def test_benchmark_smoke_run(script: str) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, f"{script} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    last = run.stdout.strip().splitlines()[-1]
    assert re.fullmatch(HEADLINES[script], last), last
