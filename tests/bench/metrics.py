"""What counting costs one inbound message: the counts of app/metrics.py that a message of its own
session makes (the session, seven replies, the verdict, the transaction and its histogram), in
prometheus-client's multiprocess mode (a write into this process's mapped file per count, as the
SMTP workers count) and in memory. CPU time, best of several rounds, in a child process of its own
each (the mode is per process). The last line: `metrics: X us per message in files, Y us in memory,
ratio R` (files against memory, the baseline of the same run).
Not a pytest test: `.venv/bin/python tests/bench/metrics.py [messages] [rounds] [--smoke]` (or
`make bench`); `--smoke` counts a few messages in seconds, as tests/test_bench_smoke.py runs it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `app` and `tests` importable

from app import metrics  # noqa: E402
from tests.bench.args import SMOKE, count  # noqa: E402

REPLIES = ("220 mx ESMTP", "250 mx", "250 2.1.0 OK", "250 2.1.5 OK", "354 End", "250 2.0.0 OK", "221 Bye")


def one_message() -> None:
    metrics.smtp_session("inbound")
    for reply in REPLIES:
        metrics.smtp_reply("inbound", reply)
    metrics.verdict("accept", "no-bad-signals")
    metrics.smtp_transaction("inbound", "accepted", 0.004)


def microseconds_per_message(messages: int, rounds: int) -> float:
    one_message()  # the label sets' children are made at the first count
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()  # CPU time: the machine may be busy with other work
        for _ in range(messages):
            one_message()
        best = min(best, (time.process_time() - start) / messages)
    return best * 1e6


def measure(mode: str, messages: int, rounds: int) -> float:
    """The figure of a child process counting in `mode` ("files" or "memory")."""
    program = [sys.executable, __file__, "--child", mode, str(messages), str(rounds)]
    return float(subprocess.run(program, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    messages, rounds = count(1, 2_000, 20_000), count(2, 3, 7)
    if SMOKE:
        print(f"smoke run: {messages} messages, {rounds} rounds")
    files, memory = (measure(mode, messages, rounds) for mode in ("files", "memory"))
    ratio = files / memory
    print(f"metrics: {files:.1f} us per message in files, {memory:.1f} us in memory, ratio {ratio:.2f}")


def child(mode: str, messages: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as folder:
        if mode == "files":
            metrics.enable_multiprocess(Path(folder), "smtp")
        print(microseconds_per_message(messages, rounds))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
