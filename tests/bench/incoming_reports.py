"""Incoming reports at scale: a year of DMARC aggregate and SMTP TLS reports parsed, stored and shown.
`--smoke` runs it on tiny data in seconds (tests/test_bench_smoke.py does, in `make test`).

The data: 10,000 DMARC aggregate reports (RFC 9990 XML, gzip) of 1 to 5,000 records each, most of
them small and a few large (records = 5000 * u^12.9 for uniform u: mean 360, some 3.6M records in
all), and 10,000 SMTP TLS reports (RFC 8460 JSON, gzip) of 1 to 3 policies, a third with failure
details. A report is about one of 4 of our domains (70/20/7/3 %), from one of 300 reporters
(Zipf-weighted: a few large receivers send most), on one day of a year. Source IPs come from a pool
of 20,000 (Zipf-weighted): the first 30 are our own servers (aligned DKIM and SPF pass), the next 270
providers and forwarders (DKIM passes, SPF does not), the rest strangers (mostly both fail); one in
eight is IPv6. Each report is generated in memory, then timed: read_file (app/inreports/read.py:
gunzip and parse), then store_report (app/inreports/store.py) in a transaction of its own, as the
import task does.

Measured, in the same run: (1) the parse and store rates, and the store step against a bare Core
executemany of the same record rows (report row, records, commit; no cutting, sums or duplicate check)
into a second database of the same kind; (2) the peak RSS of this process (it generates, parses and
stores; the reports are never all in memory); (3) each dashboard query of the store's contract for
the largest domain, over the last 30 days and over the whole year (ending mid-month, as a year to
today does: 11 whole months and 30 days), QUERY_RUNS times each in a session of its own, p99 next
to a bare `SELECT count(*)` of the raw rows of the same period. The last line is
`incoming reports: N reports/s, N records/s, store ratio R, peak RSS N MB, query p99 max X ms
(target < 200 ms)` (one line).
Targets: every query's p99 < 200 ms over the year. SQLite file by default; `--postgres` uses a
throwaway database on 127.0.0.1:5432 (dropped at the end), VACUUM ANALYZEd after loading as autovacuum would
have (the test server runs without it; without statistics the planner scans whole spans).
Not a pytest test: `.venv/bin/python tests/bench/incoming_reports.py [dmarc reports] [tls reports]
[most records] [--postgres] [--keep]`. Loading a year takes minutes, the queries seconds: `--keep`
(with --postgres) keeps the loaded database and prints its name; `--queries-of NAME` then measures
the queries only, on that database (dropped by hand: `dropdb -h 127.0.0.1 -U postgres NAME`).
"""

from __future__ import annotations

import gzip
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make `app` and `tests` importable

from sqlalchemy import insert, text  # noqa: E402

from app.db import engine_for, session_scope  # noqa: E402
from app.inreports import dmarc, store  # noqa: E402
from app.inreports.read import read_file  # noqa: E402
from app.migrate import upgrade_database  # noqa: E402
from app.models import DMARCReport, DMARCReportRecord  # noqa: E402
from tests.bench.args import SMOKE, count  # noqa: E402

DMARC_REPORTS = count(1, smoke=40, full=10_000)
TLS_REPORTS = count(2, smoke=40, full=10_000)
MOST_RECORDS = count(3, smoke=100, full=5_000)
SKEW = 12.9  # records = MOST_RECORDS * u^SKEW: mean MOST_RECORDS / 13.9 (360 of 5,000)
POOL = 500 if SMOKE else 20_000
OWN_IPS, PROVIDER_IPS = 30, 300
REPORTERS = 20 if SMOKE else 300
QUERY_RUNS = 5 if SMOKE else 100
POSTGRES = "--postgres" in sys.argv
KEEP = "--keep" in sys.argv
KEPT = sys.argv[sys.argv.index("--queries-of") + 1] if "--queries-of" in sys.argv else None
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
DOMAINS = ("bench.example", "shop.bench.example", "news.bench.example", "old.bench.example")
DOMAIN_WEIGHTS = (70, 20, 7, 3)
LAST_DAY = date(2026, 11, 17)  # mid-month: a year is 11 whole months and 30 days at its edges
DAYS = 365
FIRST_DAY = LAST_DAY - timedelta(days=DAYS - 1)
TARGET_P99_MS = 200.0
SEED = 12
POLICY_TYPES = ("sts", "tlsa", "no-policy-found")
RESULT_TYPES = (
    "starttls-not-supported",
    "certificate-expired",
    "certificate-host-mismatch",
    "validation-failure",
    "tlsa-invalid",
    "sts-policy-fetch-error",
)


def zipf(n: int, s: float) -> list[float]:
    """Cumulative Zipf weights of n ranks."""
    weights, total = [], 0.0
    for rank in range(n):
        total += 1 / (rank + 1) ** s
        weights.append(total)
    return weights


def pool_ip(k: int) -> str:
    """The k-th source IP of the pool: one in eight IPv6."""
    if k % 8 == 7:
        return f"2001:db8:{k >> 8:x}:{k & 0xFF:x}::25"
    return f"{10 + (k >> 16)}.{(k >> 8) & 0xFF}.{k & 0xFF}.{1 + k % 200}"


@dataclass(frozen=True)
class World:
    ips: list[str] = field(default_factory=lambda: [pool_ip(k) for k in range(POOL)])
    ip_weights: list[float] = field(default_factory=lambda: zipf(POOL, 1.05))
    reporter_weights: list[float] = field(default_factory=lambda: zipf(REPORTERS, 1.1))


def results(rng: random.Random, k: int) -> tuple[str, str, int]:
    """(aligned DKIM, aligned SPF, message count) of a record from pool IP k."""
    if k < OWN_IPS:
        dkim, spf = rng.random() < 0.97, rng.random() < 0.95
        return ("pass" if dkim else "fail"), ("pass" if spf else "fail"), 1 + int(rng.expovariate(1 / 40))
    if k < PROVIDER_IPS:
        return ("pass" if rng.random() < 0.6 else "fail"), "fail", 1 + int(rng.expovariate(1 / 5))
    spf = rng.random() < 0.1
    return (
        ("pass" if rng.random() < 0.05 else "fail"),
        ("pass" if spf else "fail"),
        1 + int(rng.expovariate(0.5)),
    )


def day_of(rng: random.Random) -> datetime:
    day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def dmarc_report(world: World, n: int) -> bytes:
    """DMARC aggregate report n, RFC 9990 XML, gzipped."""
    rng = random.Random(SEED * 1_000_003 + n)
    reporter = rng.choices(range(REPORTERS), cum_weights=world.reporter_weights)[0]
    domain = rng.choices(DOMAINS, weights=DOMAIN_WEIGHTS)[0]
    begin = day_of(rng)
    records = max(1, int(MOST_RECORDS * rng.random() ** SKEW))
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">'
        f"<version>1.0</version><report_metadata><org_name>Reporter {reporter}</org_name>"
        f"<email>dmarc-reports@r{reporter}.example</email><report_id>{n}.{rng.getrandbits(48):x}</report_id>"
        f"<date_range><begin>{int(begin.timestamp())}</begin><end>{int(begin.timestamp()) + 86399}</end>"
        "</date_range></report_metadata>"
        f"<policy_published><domain>{domain}</domain><p>quarantine</p><sp>none</sp><np>reject</np>"
        "<testing>n</testing><discovery_method>treewalk</discovery_method></policy_published>"
    ]
    for k in rng.choices(range(POOL), cum_weights=world.ip_weights, k=records):
        dkim, spf, messages = results(rng, k)
        disposition = "none" if "pass" in (dkim, spf) else "quarantine"
        parts.append(
            f"<record><row><source_ip>{world.ips[k]}</source_ip><count>{messages}</count><policy_evaluated>"
            f"<disposition>{disposition}</disposition><dkim>{dkim}</dkim><spf>{spf}</spf></policy_evaluated>"
            f"</row><identifiers><envelope_from>{domain}</envelope_from><header_from>{domain}</header_from>"
            f"</identifiers><auth_results><dkim><domain>{domain}</domain><selector>s{k % 3}</selector>"
            f"<result>{dkim}</result></dkim><spf><domain>{domain}</domain><scope>mfrom</scope>"
            f"<result>{spf}</result></spf></auth_results></record>"
        )
    parts.append("</feedback>\n")
    return gzip.compress("".join(parts).encode(), compresslevel=6)


def tls_report(world: World, n: int) -> bytes:
    """SMTP TLS report n, RFC 8460 JSON, gzipped."""
    rng = random.Random(SEED * 2_000_003 + n)
    reporter = rng.choices(range(REPORTERS), cum_weights=world.reporter_weights)[0]
    start = day_of(rng)
    policies = []
    for _ in range(rng.choices((1, 2, 3), weights=(70, 20, 10))[0]):
        domain = rng.choices(DOMAINS, weights=DOMAIN_WEIGHTS)[0]
        failures = [
            {
                "result-type": rng.choice(RESULT_TYPES),
                "sending-mta-ip": world.ips[rng.randrange(POOL)],
                "receiving-mx-hostname": f"mx{rng.randrange(3)}.{domain}",
                "receiving-ip": f"203.0.113.{rng.randrange(1, 255)}",
                "failed-session-count": 1 + int(rng.expovariate(1 / 30)),
            }
            for _ in range(rng.randrange(1, 5) if rng.random() < 0.3 else 0)
        ]
        policies.append(
            {
                "policy": {
                    "policy-type": rng.choices(POLICY_TYPES, weights=(60, 25, 15))[0],
                    "policy-domain": domain,
                    "mx-host": f"*.{domain}",
                },
                "summary": {
                    "total-successful-session-count": int(rng.expovariate(1 / 2000)),
                    "total-failure-session-count": sum(f["failed-session-count"] for f in failures),
                },
                "failure-details": failures,
            }
        )
    document = {
        "organization-name": f"Reporter {reporter}",
        "date-range": {
            "start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end-datetime": (start + timedelta(seconds=86399)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "contact-info": f"tlsrpt@r{reporter}.example",
        "report-id": f"{n}.{rng.getrandbits(48):x}",
        "policies": policies,
    }
    return gzip.compress(json.dumps(document).encode(), compresslevel=6)


@contextmanager
def database(directory: Path, name: str) -> Iterator[str]:
    """A migrated database: a SQLite file, or (--postgres) a throwaway PostgreSQL database."""
    if not POSTGRES:
        url = f"sqlite:///{directory / f'{name}.db'}"
        upgrade_database(url)
        yield url
        return
    pg_name = f"pw_bench_{name}_{int(time.time())}"
    admin = engine_for(f"{POSTGRES_SERVER}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
    url = f"{POSTGRES_SERVER}/{pg_name}"
    try:
        upgrade_database(url)
        yield url
    finally:
        engine_for(url).dispose()
        if KEEP and name == "reports":
            print(f"kept: measure its queries again with --queries-of {pg_name}")
        else:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}"'))


@dataclass
class Timings:
    parse: float = 0.0
    store: float = 0.0
    bare: float = 0.0
    reports: int = 0
    records: int = 0


def bare_rows(report: dmarc.AggregateReport) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The report's row and its records' rows as a naive importer would insert them."""
    meta, domain = report.metadata, report.policy.domain
    row = {
        "reporter": meta.email,
        "org_name": meta.org_name,
        "email": meta.email,
        "report_id": meta.report_id,
        "domain": domain,
        "begin": meta.begin,
        "end": meta.end,
        "imported": datetime.now(UTC),
        "record_count": len(report.records),
        "message_count": report.messages,
        "raw_size": 0,
    }
    records = [
        {
            "domain": domain,
            "day": meta.begin.date(),
            "source_ip": r.source_ip,
            "count": r.count,
            "disposition": r.disposition,
            "dkim": r.dkim,
            "spf": r.spf,
            "header_from": r.header_from,
            "auth_results": json.dumps(
                {
                    "dkim": [[a.domain, a.selector, a.result] for a in r.dkim_results],
                    "spf": [[a.domain, a.scope, a.result] for a in r.spf_results],
                    "reasons": [],
                }
            ),
        }
        for r in report.records
    ]
    return row, records


def bare_insert(url: str, report: dmarc.AggregateReport) -> float:
    """Seconds to insert the report's rows with a bare Core executemany and commit."""
    row, records = bare_rows(report)
    reports, record_table = DMARCReport.__table__, DMARCReportRecord.__table__
    started = time.perf_counter()
    with engine_for(url).begin() as conn:
        ident = conn.execute(insert(reports).values(row).returning(reports.c.id)).scalar_one()
        conn.execute(insert(record_table), [r | {"report_id": ident} for r in records])
    return time.perf_counter() - started


def load(url: str, bare_url: str, world: World) -> tuple[Timings, Timings]:
    """Parse and store every report, DMARC and TLS interleaved as they would arrive; the DMARC ones
    also into the bare database."""
    found = {"dmarc": Timings(), "tls": Timings()}
    for n in range(max(DMARC_REPORTS, TLS_REPORTS)):
        for kind, make, total in (("dmarc", dmarc_report, DMARC_REPORTS), ("tls", tls_report, TLS_REPORTS)):
            if n >= total:
                continue
            data, timings = make(world, n), found[kind]
            started = time.perf_counter()
            report = read_file(data)
            parsed = time.perf_counter()
            with session_scope(url) as session:
                stored = store.store_report(session, report, data)
            timings.store += time.perf_counter() - parsed
            timings.parse += parsed - started
            timings.reports += 1
            timings.records += stored.summary.records
            if isinstance(report, dmarc.AggregateReport):
                timings.bare += bare_insert(bare_url, report)
        if n and n % 1000 == 0:
            print(f"  {n:,} of each stored", flush=True)
    return found["dmarc"], found["tls"]


def p99(times: list[float]) -> float:
    if len(times) < 2:
        return times[0] if times else 0.0
    return statistics.quantiles(times, n=100, method="inclusive")[98]


def timed(url: str, call: Callable[[Any], object], runs: int) -> float:
    """p99 ms of `call(session)`, each call in a session of its own (as a page request has)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with session_scope(url) as session:
            call(session)
        times.append((time.perf_counter() - started) * 1000)
    return p99(times)


def bare_count(table: str, domain_column: str) -> Callable[[date], Callable[[Any], object]]:
    def counting(since: date) -> Callable[[Any], object]:
        query = text(f"SELECT count(*) FROM {table} WHERE {domain_column} = :d AND day >= :s AND day <= :u")
        return lambda s: s.execute(query, {"d": DOMAINS[0], "s": since, "u": LAST_DAY}).scalar_one()

    return counting


def measure_queries(url: str) -> float:
    """Print each contract query's p99 over 30 days and the year; the largest p99 over the year."""
    domain = DOMAINS[0]
    queries: dict[str, Callable[[date], Callable[[Any], object]]] = {
        "dmarc_days": lambda since: lambda s: store.dmarc_days(s, domain, since, LAST_DAY),
        "top_sources": lambda since: lambda s: store.top_sources(s, domain, since, LAST_DAY),
        "dmarc_reporters": lambda since: lambda s: store.dmarc_reporters(s, domain, since, LAST_DAY),
        "tls_days": lambda since: lambda s: store.tls_days(s, domain, since, LAST_DAY),
        "tls_failures": lambda since: lambda s: store.tls_failures(s, domain, since, LAST_DAY),
    }
    bare = {
        "dmarc": bare_count("dmarc_report_records", "domain"),
        "tls": bare_count("tls_report_policies", "policy_domain"),
    }
    month, year = LAST_DAY - timedelta(days=29), FIRST_DAY
    for name in queries:  # warm: the first call of each compiles and caches its statement
        timed(url, queries[name](year), 2)
    worst = 0.0
    baselines = {kind: timed(url, count_of(year), QUERY_RUNS) for kind, count_of in bare.items()}
    for name, query in queries.items():
        recent, whole = timed(url, query(month), QUERY_RUNS), timed(url, query(year), QUERY_RUNS)
        baseline = baselines["tls" if name.startswith("tls") else "dmarc"]
        print(
            f"  {name:16} p99 30 days {recent:7.1f} ms, year {whole:7.1f} ms "
            f"(bare count(*) of the year's rows {baseline:.1f} ms, ratio {whole / baseline:.2f})"
        )
        worst = max(worst, whole)
    others = {
        "report_domains": lambda s: store.report_domains(s),
        "report_raw": lambda s: store.report_raw(s, "dmarc", 1 + random.randrange(DMARC_REPORTS)),
    }
    for name, call in others.items():
        took = timed(url, call, QUERY_RUNS)
        print(f"  {name:16} p99 {took:7.1f} ms")
        worst = max(worst, took)
    return worst


def check_sums(url: str) -> None:
    """The sums the queries read equal the raw rows' (a cheap whole-year check of the largest domain)."""
    with session_scope(url) as session:
        days = store.dmarc_days(session, DOMAINS[0], FIRST_DAY, LAST_DAY)
        raw = session.execute(
            text("SELECT coalesce(sum(count), 0) FROM dmarc_report_records WHERE domain = :d"),
            {"d": DOMAINS[0]},
        ).scalar_one()
    summed = sum(day.passed + day.failed for day in days)
    if summed != raw:
        raise SystemExit(f"sums differ from the records: {summed} != {raw}")


def print_load(dmarc_t: Timings, tls_t: Timings) -> float:
    """Print the parse and store rates; the store's ratio to the bare executemany."""
    for label, t in (("DMARC", dmarc_t), ("TLS", tls_t)):
        print(
            f"{label}: {t.reports:,} reports, {t.records:,} records/policies; parse {t.parse:.1f} s, "
            f"store {t.store:.1f} s: {t.reports / (t.parse + t.store):.0f} reports/s, "
            f"{t.records / (t.parse + t.store):.0f} records/s"
        )
    ratio = dmarc_t.store / dmarc_t.bare
    print(
        f"DMARC store {dmarc_t.records / dmarc_t.store:.0f} records/s, bare executemany "
        f"{dmarc_t.records / dmarc_t.bare:.0f} records/s: ratio {ratio:.2f}"
    )
    return ratio


def queries_only(name: str) -> None:
    """Measure the queries on a database kept by an earlier run (--keep), as it was left."""
    url = f"{POSTGRES_SERVER}/{name}"
    check_sums(url)
    print(f"queries for {DOMAINS[0]} in {name}, {QUERY_RUNS} runs each:")
    worst = measure_queries(url)
    print(f"incoming reports: queries only, query p99 max {worst:.1f} ms (target < {TARGET_P99_MS:.0f} ms)")


def main() -> None:
    if KEPT is not None:
        queries_only(KEPT)
        return
    kind = "PostgreSQL" if POSTGRES else "SQLite"
    with (
        tempfile.TemporaryDirectory(prefix="inreports-bench-") as tmp,
        database(Path(tmp), "reports") as url,
        database(Path(tmp), "bare") as bare_url,
    ):
        print(f"{kind}: {DMARC_REPORTS:,} DMARC and {TLS_REPORTS:,} TLS reports over {DAYS} days")
        started = time.perf_counter()
        dmarc_t, tls_t = load(url, bare_url, World())
        print(f"generated, parsed and stored in {time.perf_counter() - started:.0f} s")
        ratio = print_load(dmarc_t, tls_t)
        if POSTGRES:  # dead row versions gone and the planner's statistics, as autovacuum (on by
            # default, off on the test server) keeps them: the rollups' upserts leave a dead version each
            with engine_for(url).execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                conn.execute(text("VACUUM ANALYZE"))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        check_sums(url)
        print(f"queries for {DOMAINS[0]}, {QUERY_RUNS} runs each:")
        worst = measure_queries(url)
    seconds = dmarc_t.parse + dmarc_t.store + tls_t.parse + tls_t.store
    reports_rate = (dmarc_t.reports + tls_t.reports) / seconds
    records_rate = dmarc_t.records / (dmarc_t.parse + dmarc_t.store)
    met = worst < TARGET_P99_MS
    print(f"target (every query p99 < {TARGET_P99_MS:.0f} ms over the year): {'met' if met else 'MISSED'}")
    print(
        f"incoming reports: {reports_rate:.0f} reports/s, {records_rate:.0f} records/s, "
        f"store ratio {ratio:.2f}, peak RSS {rss:.0f} MB, query p99 max {worst:.1f} ms "
        f"(target < {TARGET_P99_MS:.0f} ms)"
    )


if __name__ == "__main__":
    main()
