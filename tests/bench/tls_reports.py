"""The daily TLS report job at scale: TLS results for 100,000 policy domains over one day.
`--smoke` runs it on tiny data in seconds (tests/test_bench_smoke.py does, in `make test`).

50,000 recipient domains, each delivered to through its own MX host (so 100,000 policy domains: the
recipient domains' sts / no-policy-found results and the hosts' tlsa / no-policy-found results), 40 %
with failures. Every recipient domain publishes a TLSRPT record (half mailto, half https); of the
hosts, half share their recipient domain's rua, a quarter have their own (https), a quarter none. The
results sit in a SQLite file database, the records in the loopback DNS server (tests/support/dnsserver.py).

Printed: the job's wall time (DNS, database, building, queueing: message files are fsync'd as in
production) and the peak RSS of the process that ran it; the per-report build time measured apart
from DNS and queueing (the report's rows read, JSON, gzip, report mail, DKIM signature), next to a
baseline of `json.dumps` + `gzip.compress` of the same report data in the same run; and the time of
one RSA-2048 DKIM signature (app/auth/dkim.py `sign`) of a 4 KB message. The last line is
`tls reports: build X ms/report (+ DKIM Y ms), RSA-2048 signature S ms, job Z s, peak RSS R MB`.
Targets (100,000 policy domains): build <= 2 ms, signature <= 1.5 ms, job <= 120 s, RSS <= 200 MB.
Not a pytest test: `.venv/bin/python tests/bench/tls_reports.py [recipient domains]`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `app` and `tests` importable

from sqlalchemy import func, insert, select  # noqa: E402

from app.auth.dkim import sign  # noqa: E402
from app.config import Config, load_config  # noqa: E402
from app.db import session_scope  # noqa: E402
from app.dns import DNSError, Resolver  # noqa: E402
from app.migrate import upgrade_database  # noqa: E402
from app.models import OutgoingMessage, TLSFailureDetail, TLSReportPost, TLSResult  # noqa: E402
from app.reportsender import tls_report_sender  # noqa: E402
from app.tlsreports.message import SIGNED_REPORT_HEADERS, compose  # noqa: E402
from app.tlsreports.report import build_report  # noqa: E402
from app.tlsreports.results import failures_by_result, policy_result, report_rows  # noqa: E402
from tests.bench.args import SMOKE, count  # noqa: E402
from tests.support.configs import dkim_keys, write_config  # noqa: E402
from tests.support.dnsserver import DNSTestServer  # noqa: E402

RECIPIENT_DOMAINS = count(1, smoke=40, full=50_000)
NOW = datetime(2026, 11, 25, 0, 5, tzinfo=UTC)
DAY = date(2026, 11, 24)
SAMPLE = min(2000, RECIPIENT_DOMAINS)  # reports whose build is timed apart
TARGET_BUILD_MS = 2.0
TARGET_SIGNATURE_MS = 1.5
TARGET_JOB_S = 120
TARGET_RSS_MB = 200
SIGNATURES = 40 if SMOKE else 1000  # RSA-2048 signatures timed
NSD = "/usr/sbin/nsd"
STS_STRINGS = json.dumps(["version: STSv1", "mode: enforce", "mx: *.example", "max_age: 604800"])


def recipient(i: int) -> str:
    return f"r{i}.example"


def host(i: int) -> str:
    return f"mx.r{i}.example"


def result_rows(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two results per recipient domain (its policy and its host's), failure details for 40 %."""
    results: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for i in range(n):
        failing = i % 5 < 2
        sts = i % 2 == 0
        tlsa = i % 3 == 0
        for is_host in (False, True):
            result_id = len(results) + 1
            if is_host:
                kind, strings, mx = ("tlsa", json.dumps(["3 1 1 " + "ab" * 32]), json.dumps([host(i)]))
                policy_domain = host(i)
                if not tlsa:
                    kind, strings, mx = ("no-policy-found", "[]", "[]")
            else:
                kind, strings, mx = ("sts", STS_STRINGS, json.dumps(["*.example"]))
                policy_domain = recipient(i)
                if not sts:
                    kind, strings, mx = ("no-policy-found", "[]", "[]")
            results.append(
                {
                    "id": result_id,
                    "policy_domain": policy_domain,
                    "day": DAY,
                    "recipient_domain": recipient(i),
                    "is_host": is_host,
                    "policy_type": kind,
                    "policy_string": strings,
                    "mx_host": mx,
                    "policy_key": f"{result_id:064x}",
                    "success_count": 20 + i % 50,
                    "failure_count": 3 if failing else 0,
                }
            )
            if failing:
                for j, result_type in enumerate(("certificate-expired", "starttls-not-supported")):
                    details.append(
                        {
                            "result_id": result_id,
                            "detail_key": f"{result_id:056x}{j:08x}",
                            "result_type": result_type,
                            "sending_ip": "192.0.2.1",
                            "receiving_mx_hostname": host(i),
                            "receiving_mx_helo": host(i),
                            "receiving_ip": f"198.51.{i // 250 % 256}.{i % 250}",
                            "failure_reason_code": None,
                            "additional_info": None,
                            "failed_session_count": 1 + j,
                        }
                    )
    return results, details


def tlsrpt_records(n: int) -> Iterator[tuple[str, str]]:
    """(name, TXT value) of every TLSRPT record published."""
    for i in range(n):
        rua = f"mailto:tls@{recipient(i)}" if i % 2 else f"https://reports.example/{i}"
        yield f"_smtp._tls.{recipient(i)}", f"v=TLSRPTv1; rua={rua}"
        if i % 4 < 2:
            yield f"_smtp._tls.{host(i)}", f"v=TLSRPTv1; rua={rua}"
        elif i % 4 == 2:
            yield f"_smtp._tls.{host(i)}", f"v=TLSRPTv1; rua=https://dane.example/{i}"


@contextmanager
def nsd_server(directory: Path, n: int) -> Iterator[int]:
    """NSD (a real authoritative server, written in C) serving the records on a loopback port.

    The test suite's Python DNS server answers a few thousand queries a second and scans all its names
    for each NXDOMAIN; NSD lets the job's own DNS client be what is measured.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lines = ["$ORIGIN example.", "$TTL 3600", "@ SOA ns.example. admin.example. 1 3600 600 86400 3600"]
    lines += ["@ NS ns.example.", "ns A 127.0.0.1"]
    lines += [f'{name.removesuffix(".example")} TXT "{value}"' for name, value in tlsrpt_records(n)]
    (directory / "example.zone").write_text("\n".join(lines) + "\n")
    (directory / "nsd.conf").write_text(
        f"""server:
  ip-address: 127.0.0.1@{port}
  zonesdir: "{directory}"
  pidfile: "{directory}/nsd.pid"
  database: ""
  username: ""
  xfrdfile: "{directory}/xfrd.state"
  zonelistfile: "{directory}/zone.list"
  logfile: "{directory}/nsd.log"
  # Response rate limiting (on by default: 200 a second per answer kind) drops NXDOMAIN answers to a
  # client as fast as the job: its lookups would time out, which no local resolver does.
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: example
  zonefile: example.zone
"""
    )
    subprocess.run([NSD, "-c", str(directory / "nsd.conf")], check=True)
    pidfile = directory / "nsd.pid"
    try:
        wait_until_answering(port)
        yield port
    finally:
        stop_nsd(pidfile, directory / "nsd.conf")


def stop_nsd(pidfile: Path, conf: Path, timeout: float = 30.0) -> None:
    """SIGTERM to the pid NSD wrote, then wait (with a deadline) until every NSD process of `conf` has
    exited: the main process removes its pid file before its xfrd child writes its state file, and the
    directory is removed next."""
    if not pidfile.exists():
        return
    os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while nsd_running(conf) and time.monotonic() < deadline:
        time.sleep(0.05)


def nsd_running(conf: Path) -> bool:
    """Whether a process started with this config file is alive (NSD's children keep its command line)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(conf).encode() in cmdline.read_bytes():
                return True
        except OSError:  # the process ended while we looked
            continue
    return False


def wait_until_answering(port: int, timeout: float = 60.0) -> None:
    resolver = Resolver(nameservers=["127.0.0.1"], port=port, timeout=1.0, cache=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if asyncio.run(resolver.txt(f"_smtp._tls.{recipient(0)}")):
                return
        except DNSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nsd did not answer on 127.0.0.1:{port} within {timeout} s")


def setup(directory: Path, dns_port: int, n: int) -> Path:
    """Config (with DKIM keys for example.org), migrated database, and the day's results."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_config(directory, dkim_keys(directory), dns_port=dns_port)
    # The tests' 1 s DNS timeout is tight for a loaded machine; production's default is 5 s.
    path.write_text(path.read_text().replace("timeout = 1.0", "timeout = 5.0"))
    config = load_config(path)
    upgrade_database(config.resolved_database_url)
    results, details = result_rows(n)
    with session_scope(config.resolved_database_url) as session:
        for start in range(0, len(results), 20_000):
            session.execute(insert(TLSResult), results[start : start + 20_000])
        for start in range(0, len(details), 20_000):
            session.execute(insert(TLSFailureDetail), details[start : start + 20_000])
    return path


# The job, in a process of its own that imports only what a worker needs for it: its peak RSS is
# the job's (the benchmark's own imports, parsedmarc and pytest among them, are not counted).

JOB = """
import asyncio, json, re, sys, time
from datetime import datetime
from app.config import load_config
from app.tlsreports.job import send_tls_reports

config = load_config(sys.argv[1])
started = time.perf_counter()
summary = asyncio.run(send_tls_reports(config, datetime.fromisoformat(sys.argv[2])))
wall = time.perf_counter() - started
cpu = time.process_time()  # on a busy machine the wall time is mostly waiting for a core
# VmHWM, the peak RSS of this program (ru_maxrss would count the parent's size at the fork).
rss_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
reports = len(summary.reports)
outcome = summary.outcome()
print(json.dumps({"wall": wall, "cpu": cpu, "reports": reports, "outcome": outcome, "rss_kb": rss_kb}))
"""


def job_in_subprocess(config_path: Path) -> dict[str, Any]:
    command = [sys.executable, "-c", JOB, str(config_path), NOW.isoformat()]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(output.strip().splitlines()[-1])


# Per-report build time, apart from DNS and queueing.


def time_builds(config: Config) -> dict[str, float]:
    """Mean ms per report of each step the job takes for a report, apart from DNS and queueing."""
    submitter = tls_report_sender(config)
    keys = [(DAY, recipient(i)) for i in range(SAMPLE)]
    spent = dict.fromkeys(("rows", "json_gzip", "mime", "dkim", "baseline"), 0.0)
    with session_scope(config.resolved_database_url) as session:
        t0 = time.perf_counter()
        rows = report_rows(session, "recipient", keys)
        failures = failures_by_result(session, [r.id for found in rows.values() for r in found])
        spent["rows"] = time.perf_counter() - t0
        for day, domain in keys:
            policies = [policy_result(r, failures.get(r.id, [])) for r in rows[(day, domain)]]
            t1 = time.perf_counter()
            report = build_report(domain, day, submitter.domain, policies)
            gzipped = report.gzipped()
            t2 = time.perf_counter()
            unsigned = compose(report, gzipped, submitter, [f"tls@{domain}"], NOW)
            t3 = time.perf_counter()
            sign(unsigned, submitter.domain, submitter.selectors, extra_headers=SIGNED_REPORT_HEADERS)
            t4 = time.perf_counter()
            document = report.to_json()  # the same data, ready-made: the baseline only serialises
            t5 = time.perf_counter()
            gzip.compress(json.dumps(document).encode(), compresslevel=6)
            t6 = time.perf_counter()
            for step, seconds in zip(spent, (0, t2 - t1, t3 - t2, t4 - t3, t6 - t5), strict=True):
                spent[step] += seconds
    return {step: 1000 * seconds / SAMPLE for step, seconds in spent.items()}


def time_signature(config: Config) -> float:
    """Mean ms of one RSA-2048 signature (the submitter's rsa1 selector) of a 4096-octet text message."""
    submitter = tls_report_sender(config)
    [rsa] = [s for s in submitter.selectors if s.algorithm == "rsa"]
    head = (
        f"From: postmaster@{submitter.domain}\r\nTo: tls@r0.example\r\nSubject: Report\r\n"
        "Date: Wed, 25 Nov 2026 00:05:00 +0000\r\nMessage-ID: <bench@example.org>\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog; TLS sessions were counted.\r\n"
    message = (head + line * (4096 // len(line)))[:4094] + b"\r\n"
    sign(message, submitter.domain, [rsa])  # the key is loaded once, then cached
    started = time.perf_counter()
    for _ in range(SIGNATURES):
        sign(message, submitter.domain, [rsa])
    return 1000 * (time.perf_counter() - started) / SIGNATURES


@contextmanager
def dns_for_bench(directory: Path, n: int) -> Iterator[int]:
    if Path(NSD).exists():
        with nsd_server(directory, n) as port:
            yield port
        return
    print(f"note: {NSD} not found (Debian package nsd): the Python test DNS server is used, and the")
    print("job's wall time is mostly that server's (a few thousand answers a second)")
    server = DNSTestServer().start()
    for name, value in tlsrpt_records(n):
        server.txt(name, value)
    try:
        yield server.port
    finally:
        server.stop()


def main() -> None:
    n = RECIPIENT_DOMAINS
    with tempfile.TemporaryDirectory(prefix="pw-tlsrpt-bench-") as tmp, dns_for_bench(Path(tmp), n) as port:
        started = time.perf_counter()
        config_path = setup(Path(tmp) / "config", port, n)
        config = load_config(config_path)
        print(f"setup: {2 * n} policy domains, {2 * n} results ({time.perf_counter() - started:.1f} s)")
        ms = time_builds(config)
        signature_ms = time_signature(config)
        job = job_in_subprocess(config_path)
        with session_scope(config.resolved_database_url) as session:
            mails = session.scalar(select(func.count()).select_from(OutgoingMessage))
            post_rows = session.scalar(select(func.count()).select_from(TLSReportPost))
            unsent = session.scalar(
                select(func.count()).select_from(TLSResult).where(~TLSResult.recipient_report_sent)
            )
    build = ms["rows"] + ms["json_gzip"] + ms["mime"]
    rss_mb = job["rss_kb"] / 1024
    print(f"job: {job['outcome']}")
    print(
        f"  {mails} report mails queued (files fsync'd), {post_rows} https posts scheduled, {unsent} unsent"
    )
    print(
        f"job wall time, DNS included: {job['wall']:.1f} s ({2 * n} policy domains, {job['reports']} "
        f"reports); its CPU time {job['cpu']:.1f} s"
    )
    print(
        f"job peak RSS: {rss_mb:.0f} MB (target <= {TARGET_RSS_MB} MB; wall time target <= {TARGET_JOB_S} s)"
    )
    print(
        f"per report (mean of {SAMPLE}): rows {ms['rows']:.3f} ms, JSON+gzip {ms['json_gzip']:.3f} ms, "
        f"report mail {ms['mime']:.3f} ms: build {build:.3f} ms (target <= {TARGET_BUILD_MS} ms)"
    )
    print(
        f"  DKIM signatures of the mail (app/auth/dkim.py; ed25519 + rsa-2048): {ms['dkim']:.3f} ms; "
        f"build + signatures {build + ms['dkim']:.3f} ms"
    )
    print(
        f"one RSA-2048 DKIM signature of a 4096-octet message (mean of {SIGNATURES}): {signature_ms:.3f} ms "
        f"(target <= {TARGET_SIGNATURE_MS} ms)"
    )
    print(
        f"baseline json.dumps+gzip of the same report: {ms['baseline']:.3f} ms; "
        f"JSON+gzip / baseline = {ms['json_gzip'] / ms['baseline']:.2f}, build / baseline = "
        f"{build / ms['baseline']:.2f}"
    )
    print(
        f"tls reports: build {build:.2f} ms/report (+ DKIM {ms['dkim']:.2f} ms), RSA-2048 signature "
        f"{signature_ms:.2f} ms, job {job['wall']:.1f} s, peak RSS {rss_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
