"""The daily TLS report job at scale: TLS results for 100,000 policy domains over one day.

50,000 recipient domains, each delivered to through its own MX host (so 100,000 policy domains: the
recipient domains' sts / no-policy-found results and the hosts' tlsa / no-policy-found results), 40 %
with failures. Every recipient domain publishes a TLSRPT record (half mailto, half https); of the
hosts, half share their recipient domain's rua, a quarter have their own (https), a quarter none. The
results sit in a SQLite file database, the records in the loopback DNS server (tests/dnsserver.py).

Printed: the job's wall time (DNS, database, building, queueing: message files are fsync'd as in
production) and the peak RSS of the process that ran it; the per-report build time measured apart
from DNS and queueing (the report's rows read, JSON, gzip, report mail, DKIM signature), next to a
baseline of `json.dumps` + `gzip.compress` of the same report data in the same run. The last line is
`tls reports: build X ms/report, job Y s, peak RSS Z MB`. Targets: build <= 2 ms, RSS <= 300 MB.
Not a pytest test: `.venv/bin/python tests/bench/tls_reports.py [recipient domains]`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `app` and `tests` importable

from sqlalchemy import func, insert, select  # noqa: E402

from app.auth.dkimkeys import dns_txt_value, generate_private_key_pem  # noqa: E402
from app.config import Config, load_config  # noqa: E402
from app.db import session_scope  # noqa: E402
from app.migrate import upgrade_database  # noqa: E402
from app.models import OutgoingMessage, TLSFailureDetail, TLSReportPost, TLSResult  # noqa: E402
from app.tlsreports.job import send_tls_reports  # noqa: E402
from app.tlsreports.message import report_message  # noqa: E402
from app.tlsreports.report import build_report  # noqa: E402
from app.tlsreports.results import failures_by_result, policy_result, report_rows  # noqa: E402
from app.tlsreports.sender import find_submitter  # noqa: E402
from tests.configs import write_config  # noqa: E402
from tests.dnsserver import DNSTestServer  # noqa: E402

RECIPIENT_DOMAINS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 50_000
NOW = datetime(2026, 11, 25, 0, 5, tzinfo=UTC)
DAY = date(2026, 11, 24)
SAMPLE = 2000  # reports whose build is timed apart
TARGET_BUILD_MS = 2.0
TARGET_RSS_MB = 300
STS_STRINGS = json.dumps(["version: STSv1", "mode: enforce", "mx: *.example", "max_age: 604800"])

DKIM = """
[[domains."example.org".dkim]]
selector = "ed1"
algorithm = "ed25519"
private_key_file = "ed1.pem"

[[domains."example.org".dkim]]
selector = "rsa1"
algorithm = "rsa"
private_key_file = "rsa1.pem"
"""


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


def publish_records(dns: DNSTestServer, n: int) -> None:
    for i in range(n):
        rua = f"mailto:tls@{recipient(i)}" if i % 2 else f"https://reports.example/{i}"
        dns.txt(f"_smtp._tls.{recipient(i)}", f"v=TLSRPTv1; rua={rua}")
        if i % 4 < 2:
            dns.txt(f"_smtp._tls.{host(i)}", f"v=TLSRPTv1; rua={rua}")
        elif i % 4 == 2:
            dns.txt(f"_smtp._tls.{host(i)}", f"v=TLSRPTv1; rua=https://dane.example/{i}")


def setup(directory: Path, dns: DNSTestServer, n: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, algorithm in (("ed1", "ed25519"), ("rsa1", "rsa")):
        pem = generate_private_key_pem(algorithm)  # type: ignore[arg-type]
        (directory / f"{name}.pem").write_bytes(pem)
        dns.txt(f"{name}._domainkey.example.org", dns_txt_value(pem, algorithm))  # type: ignore[arg-type]
    path = write_config(directory, DKIM, dns_port=dns.port)
    config = load_config(path)
    upgrade_database(config.resolved_database_url)
    results, details = result_rows(n)
    with session_scope(config.resolved_database_url) as session:
        for start in range(0, len(results), 20_000):
            session.execute(insert(TLSResult), results[start : start + 20_000])
        for start in range(0, len(details), 20_000):
            session.execute(insert(TLSFailureDetail), details[start : start + 20_000])
    publish_records(dns, n)
    return path


# The job, in a process of its own so its peak RSS is its own.


def run_job(config_path: str) -> None:
    config = load_config(config_path)
    started = time.perf_counter()
    summary = asyncio.run(send_tls_reports(config, NOW))
    wall = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"wall": wall, "reports": len(summary.reports), "outcome": summary.outcome(), "rss_kb": peak_kb}
        )
    )


def job_in_subprocess(config_path: Path) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, __file__, "--job", str(config_path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# Per-report build time, apart from DNS and queueing.


def time_builds(config: Config) -> tuple[float, float, float, float]:
    """Mean ms per report: (rows read as the job reads them, JSON + gzip, mail + DKIM, baseline)."""
    submitter = find_submitter(config)
    keys = [(DAY, recipient(i)) for i in range(SAMPLE)]
    build = mail = baseline = 0.0
    with session_scope(config.resolved_database_url) as session:
        t0 = time.perf_counter()
        rows = report_rows(session, "recipient", keys)
        failures = failures_by_result(session, [r.id for found in rows.values() for r in found])
        read = time.perf_counter() - t0
        for day, domain in keys:
            policies = [policy_result(r, failures.get(r.id, [])) for r in rows[(day, domain)]]
            t1 = time.perf_counter()
            report = build_report(domain, day, submitter.domain, policies)
            gzipped = report.gzipped()
            t2 = time.perf_counter()
            report_message(report, gzipped, submitter, [f"tls@{domain}"], NOW)
            t3 = time.perf_counter()
            document = report.to_json()  # the same data, ready-made: the baseline only serialises
            t4 = time.perf_counter()
            gzip.compress(json.dumps(document).encode(), compresslevel=6)
            t5 = time.perf_counter()
            build, mail, baseline = build + t2 - t1, mail + t3 - t2, baseline + t5 - t4
    return tuple(1000 * v / SAMPLE for v in (read, build, mail, baseline))  # type: ignore[return-value]


def main() -> None:
    n = RECIPIENT_DOMAINS
    dns = DNSTestServer().start()
    with tempfile.TemporaryDirectory(prefix="pw-tlsrpt-bench-") as tmp:
        started = time.perf_counter()
        config_path = setup(Path(tmp) / "config", dns, n)
        config = load_config(config_path)
        print(f"setup: {2 * n} policy domains, {2 * n} results ({time.perf_counter() - started:.1f} s)")
        read_ms, build_ms, mail_ms, baseline_ms = time_builds(config)
        job = job_in_subprocess(config_path)
        with session_scope(config.resolved_database_url) as session:
            mails = session.scalar(select(func.count()).select_from(OutgoingMessage))
            post_rows = session.scalar(select(func.count()).select_from(TLSReportPost))
            unsent = session.scalar(
                select(func.count()).select_from(TLSResult).where(~TLSResult.recipient_report_sent)
            )
    dns.stop()
    per_report = read_ms + build_ms + mail_ms
    rss_mb = job["rss_kb"] / 1024
    print(
        f"job: {job['outcome']}; {mails} report mails queued, {post_rows} https posts scheduled, {unsent} unsent"
    )
    print(f"job wall time: {job['wall']:.1f} s for {2 * n} policy domains ({job['reports']} reports)")
    print(f"job peak RSS: {rss_mb:.0f} MB (target <= {TARGET_RSS_MB} MB)")
    print(
        f"per report (mean of {SAMPLE}, no DNS, no queueing): rows {read_ms:.3f} ms, JSON+gzip {build_ms:.3f} ms, "
        f"mail+DKIM (ed25519 and rsa-2048) {mail_ms:.3f} ms; total {per_report:.3f} ms (target <= {TARGET_BUILD_MS})"
    )
    print(
        f"baseline json.dumps+gzip of the same report: {baseline_ms:.3f} ms; "
        f"JSON+gzip / baseline = {build_ms / baseline_ms:.2f}, whole build / baseline = {per_report / baseline_ms:.1f}"
    )
    print(f"tls reports: build {per_report:.2f} ms/report, job {job['wall']:.1f} s, peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--job":
        run_job(sys.argv[2])
    else:
        main()
