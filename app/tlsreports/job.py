"""The daily TLS report job (SPEC R5.1 to R5.4, RFC 8460 §4.1, §5).

For each UTC day before today that has unsent results (normally yesterday; the day before when a run
was missed or DNS failed), one report per policy domain that publishes a TLSRPT record:

1. Recipient domains first. A recipient domain's report holds everything recorded for deliveries to
   it: its own policy (sts / no-policy-found) and the policies of the MX hosts it used (tlsa /
   no-policy-found, policy-domain the TLSA base domain, mx-host the host).
2. Then the MX hosts' policy domains (the TLSA base domain, or the host under no-policy-found; not
   recipient domains themselves), from their own TLSRPT record. The report holds their tlsa /
   no-policy-found policies as recorded (RFC 8460 §1.3: the policy domain is the TLSA base domain)
   and leaves out the sessions for recipient domains whose rua is the host's: they got them in 1.

A report goes out only if it holds a failure (unless `outgoing_tls_reports_for_all_success`). Its rows
are marked sent before it is queued, all or none and only if no other run marked them first (so a
re-run, a crash or two racing workers never send a report twice), in the transaction that queues it.
Rows of domains without a (valid) record, and reports without failures, are marked too; a DNS
temporary error keeps them for the next run. Results older than 48 h are dropped. Sends are spread:
the n-th report is due n x spacing after the run (spacing: a parameter, by default 4 h / reports, at
most 5 minutes); mail goes through the queue, `https:` rua are POSTed by app/tlsreports/posts.py.

One clock: delivery counts each result under the database's UTC date, and a run takes "today" from
the database once the results still being written are committed (`ReportJob._clock`), so a
result never joins a day that was reported. Should one all the same (a clock set back, a run by hand
with a `now` ahead), it is reported on its own, with an id and file name of its own (`Report.late`).

Reports are worked through in chunks: the chunk's TLSRPT records are looked up concurrently first,
then its rows are read, marked and queued in one transaction, so the database sees a few statements
and one commit per chunk, and no transaction waits for DNS. The chunk's rows are all marked by one
statement first (which tells which another run took meanwhile), and the marks of the reports that are
kept for the next run are taken back by one more before the commit. The chunk's report mails are
queued together (their files fsync'd in one round); should one not be written, the whole chunk is
rolled back and kept for the next run. The suppression list is read once, as the run starts (as the
DMARC run does), not once per address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app import metrics
from app.auth.dkim import DKIMSigningError
from app.config import Config
from app.db import session_scope
from app.dbclock import database_now
from app.dns import BulkTXT, Resolver, resolver_from_config
from app.jobs import TLS_REPORTS, Run, report_run
from app.logs import cid_scope, fields, new_cid
from app.models.base import utcnow
from app.queue.enqueue import Queued, enqueue_many
from app.reportsender import NoReportSenderError, ReportSender, tls_report_sender
from app.reportsuppress import suppressed_addresses, suppression_key
from app.tlsreports.message import report_message
from app.tlsreports.posts import add_post
from app.tlsreports.record import LookupStatus, TLSRPTLookup, TLSRPTRecord, lookup_tlsrpt, tlsrpt_name
from app.tlsreports.report import FailureCount, PolicyResult, Report, build_report
from app.tlsreports.results import (
    Role,
    affected_recipient_domains,
    claim,
    drop_old_results,
    failures_by_result,
    hold_back_writers,
    pending_reports,
    policy_result,
    report_rows,
    reported_before,
    unclaim,
)

if TYPE_CHECKING:  # rows app/tlsreports/results.py hands over
    from app.models import TLSResult

log = logging.getLogger("app.tlsreports")

JOB_NAME = TLS_REPORTS  # the registry's name (app/jobs.py): the status page finds the runs by it
SEND_WINDOW = timedelta(hours=4)  # RFC 8460 §4.1: spread sending over hours, not all at midnight
MAX_SPACING = timedelta(minutes=5)
MAX_REPORT_ATTEMPTS = 5  # SPEC R5.3: mail deliveries of a report
LOOKUP_CONCURRENCY = 32
CHUNK = 256  # reports per transaction (and per batch of DNS lookups)


@dataclass
class RunSummary:
    cid: str
    clock: datetime | None = None  # the run's "now": reports are due from then on
    disabled: bool = False
    no_sender: str = ""
    dropped: int = 0
    reports: list[str] = field(default_factory=list)  # ids of reports queued or scheduled for POST
    skipped: int = 0  # marked without a report: no record, invalid record, no failure, nothing left
    kept: int = 0  # left for the next run (DNS temporary error, signing or queueing error)

    def outcome(self) -> str:
        if self.disabled:
            return "disabled by no_outgoing_tls_reports"
        if self.no_sender:
            return f"nothing sent: {self.no_sender}"
        return (
            f"{len(self.reports)} report(s) scheduled, {self.skipped} skipped, "
            f"{self.kept} kept for the next run, {self.dropped} result(s) older than 48 h dropped"
        )


@dataclass(frozen=True)
class _Key:
    """Which report: a recipient domain's or an MX host's, for one day."""

    role: Role
    day: date
    domain: str

    def __str__(self) -> str:
        kind = "recipient domain" if self.role == "recipient" else "MX host"
        return f"{kind} {self.domain}, day {self.day}"


@dataclass(frozen=True)
class _Planned:
    """A report about to be sent, and to whom."""

    report: Report
    gzipped: bytes
    message: bytes  # the signed report message for the mailto rua; empty when there are none
    mailto: list[str]
    https: list[str]
    left_out: set[str]


def default_spacing(reports: int) -> timedelta:
    return min(MAX_SPACING, SEND_WINDOW / max(reports, 1))


class ReportJob:
    """One run; `now` is the run's clock: the database's unless given (tests pass it in)."""

    def __init__(
        self,
        config: Config,
        now: datetime | None = None,
        *,
        resolver: Resolver | None = None,
        spacing: timedelta | None = None,
    ) -> None:
        self.config = config
        self.db_url = config.resolved_database_url
        self.given_now = now
        self.now = now or utcnow()  # until the run starts: then the database's clock, unless given
        # No cache: each domain is looked up once a run, and a cache of 100,000 answers is 300 MB.
        self.resolver = resolver or resolver_from_config(config.dns, cache=False)
        self.spacing = spacing
        self.lookups: dict[str, TLSRPTLookup] = {}
        # Recipient domains' usable rua (from step 1, or looked up), to compare with a host's in step 2.
        self.recipient_rua: dict[str, frozenset[str]] = {}
        self.suppressed: set[str] = set()  # the suppression list as the run started, by suppression_key

    async def run(self) -> RunSummary:
        done = "tls reports: run finished: %s"
        return await report_run(self.db_url, JOB_NAME, self._recorded, log=log, done=done, clock=self._clock)

    async def _recorded(self, run: Run) -> RunSummary:
        self.now = run.started
        summary = RunSummary(run.cid, clock=self.now)
        await self._run(summary)
        return summary

    def _clock(self, session: Session) -> datetime:
        """The run's clock, taken once every result of an earlier day is committed.

        Delivery counts a result under the database's date when its upsert runs (app/dbclock.py).
        Here the writers of tls_results are waited for (PostgreSQL: a SHARE lock; SQLite: the write
        lock that inserting the run's record took) and the date is read while they are held back: a
        result still on its way counts for today, which this run does not report, never for a day it
        does.
        """
        hold_back_writers(session)
        return self.given_now or database_now(session)

    async def _run(self, summary: RunSummary) -> None:
        today = self.now.date()
        log.info("tls reports: run for days before %s", today)
        with session_scope(self.db_url) as session:
            summary.dropped = drop_old_results(session, self.now)
        if self.config.no_outgoing_tls_reports:
            summary.disabled = True
            log.info("tls reports: not sending: no_outgoing_tls_reports is set")
            return
        try:
            report_sender = tls_report_sender(self.config)
        except NoReportSenderError as e:
            summary.no_sender = str(e)
            log.warning("tls reports: nothing sent: %s", e)
            return
        with session_scope(self.db_url) as session:
            phases: list[tuple[Role, list[tuple[date, str]]]] = [
                ("recipient", pending_reports(session, "recipient", today)),
                ("host", pending_reports(session, "host", today)),
            ]
            self.suppressed = suppressed_addresses(session, "tlsrpt", self.now)
        spacing = self.spacing
        if spacing is None:
            spacing = default_spacing(sum(len(keys) for _, keys in phases))
        sender = _Sender(self, summary, report_sender, spacing)
        for role, keys in phases:
            for start in range(0, len(keys), CHUNK):
                await self._chunk(
                    sender, [_Key(role, day, domain) for day, domain in keys[start : start + CHUNK]]
                )

    async def _chunk(self, sender: _Sender, keys: list[_Key]) -> None:
        await self._prefetch(key.domain for key in keys)
        if keys[0].role == "host":
            with session_scope(self.db_url) as session:
                recipients = affected_recipient_domains(session, sorted({key.domain for key in keys}))
            await self._prefetch(d for d in recipients if d not in self.recipient_rua)
            for domain in recipients:
                self._remember_rua(domain)
        try:
            with session_scope(self.db_url) as session:
                wanted = [(key.day, key.domain) for key in keys]
                rows = report_rows(session, keys[0].role, wanted)
                failures = failures_by_result(session, [r.id for found in rows.values() for r in found])
                sender.reported = reported_before(session, keys[0].role, wanted)
                sender.claim_chunk(session, keys[0].role, rows.values())
                for key in keys:
                    self._report(session, sender, key, rows.get((key.day, key.domain), []), failures)
                sender.queue_mail(session)
                sender.release(session, keys[0].role)
        except (SQLAlchemyError, OSError) as e:  # OSError: a report mail's file could not be written
            sender.rolled_back(e)
        else:
            sender.committed()
        # Step 2 needs only the recipient domains' rua (kept apart): memory stays flat.
        self.lookups.clear()

    # DNS.

    async def _prefetch(self, domains: Iterable[str]) -> None:
        missing = sorted({d for d in domains if d not in self.lookups})
        limit = asyncio.Semaphore(LOOKUP_CONCURRENCY)
        async with BulkTXT(self.resolver) as lookups:  # one socket for the batch (app/dns.py says why)

            async def one(domain: str) -> None:
                async with limit:
                    self.lookups[domain] = await lookup_tlsrpt(lookups, domain)

            await asyncio.gather(*(one(d) for d in missing))

    def _remember_rua(self, domain: str) -> None:
        if domain in self.lookups and domain not in self.recipient_rua:
            record = self.lookups[domain].record
            self.recipient_rua[domain] = frozenset(record.destinations if record else ())

    # One report.

    def _report(
        self,
        session: Session,
        sender: _Sender,
        key: _Key,
        rows: list[TLSResult],
        failures: dict[int, list[FailureCount]],
    ) -> None:
        lookup = self.lookups[key.domain]
        if key.role == "recipient":
            self._remember_rua(key.domain)
        if not rows:
            return  # another run took them meanwhile
        if lookup.status is LookupStatus.TEMPERROR:
            sender.keep(key, f"DNS: {lookup.reason}")
            return
        if lookup.record is None:
            sender.skip(key, rows, _lookup_problem(key.domain, lookup))
            return
        planned = self._plan(sender, key, rows, failures, lookup.record)
        if planned is not None:
            sender.send(session, key, rows, planned)

    def _plan(
        self,
        sender: _Sender,
        key: _Key,
        rows: list[TLSResult],
        failures: dict[int, list[FailureCount]],
        record: TLSRPTRecord,
    ) -> _Planned | None:
        """The report for these rows and its destinations; None (rows marked, reason logged) if none."""
        policies, left_out = self._policies(key.role, rows, failures, frozenset(record.destinations))
        if not policies:
            shared = ", ".join(sorted(left_out))
            sender.skip(key, rows, f"every affected recipient domain ({shared}) has the host's rua")
            return None
        # Results recorded after their day's report (a clock set back, a run by hand) get a report
        # of their own id: receivers take a report id seen before for a duplicate.
        late = sender.summary.cid if (key.day, key.domain) in sender.reported else ""
        report = build_report(key.domain, key.day, sender.report_sender.domain, policies, late)
        if not report.has_failure and not self.config.outgoing_tls_reports_for_all_success:
            sender.skip(key, rows, f"no failures ({report.sessions[0]} successful session(s))")
            return None
        mailto = [a for a in record.mailto if not self._suppressed(key, a)]
        if not mailto and not record.https:
            sender.skip(key, rows, "every rua address is on the suppression list")
            return None
        gzipped = report.gzipped()
        try:
            from_ = sender.report_sender
            message = report_message(report, gzipped, from_, mailto, self.now) if mailto else b""
        except DKIMSigningError as e:
            sender.keep(key, f"cannot DKIM-sign the report: {e}", logging.ERROR)
            return None
        return _Planned(report, gzipped, message, mailto, list(record.https), left_out)

    def _policies(
        self,
        role: Role,
        rows: list[TLSResult],
        failures: dict[int, list[FailureCount]],
        host_rua: frozenset[str],
    ) -> tuple[list[PolicyResult], set[str]]:
        if role == "recipient":
            return [policy_result(row, failures.get(row.id, [])) for row in rows], set()
        policies: list[PolicyResult] = []
        left_out: set[str] = set()
        for row in rows:
            if self.recipient_rua.get(row.recipient_domain) == host_rua:
                left_out.add(row.recipient_domain)
            else:
                policies.append(policy_result(row, failures.get(row.id, [])))
        return policies, left_out

    def _suppressed(self, key: _Key, address: str) -> bool:
        if suppression_key(address) not in self.suppressed:
            return False
        log.info("tls reports: %s: not sending to %s: on the suppression list", key, address)
        return True


class _Sender:
    """Marks rows and queues reports in the chunk's transaction, one report `spacing` after the other.

    What a chunk did is logged and counted when its transaction commits: a chunk that fails to commit
    sends nothing and marks nothing, and its log says so.
    """

    def __init__(
        self, job: ReportJob, summary: RunSummary, report_sender: ReportSender, spacing: timedelta
    ) -> None:
        self.job = job
        self.summary = summary
        self.report_sender = report_sender
        self.spacing = spacing
        self.scheduled = 0
        self.reported: set[tuple[date, str]] = set()  # the chunk's (day, domain) reported before
        self._done: list[Callable[[], None]] = []  # outcomes of the open chunk, applied at its commit
        self._chunk_reports: list[str] = []
        self._claimed: set[int] = set()  # rows of the open chunk this run marked
        self._unused: set[int] = set()  # of those, the rows of no report sent or skipped: given back
        self._mail: list[Queued] = []  # the open chunk's report mails, queued together at its end

    def claim_chunk(self, session: Session, role: Role, rows: Iterable[list[TLSResult]]) -> None:
        """Mark the chunk's rows, in one statement; `_take` then hands them out report by report."""
        self._claimed = claim(session, role, [r.id for found in rows for r in found])
        self._unused = set(self._claimed)

    def release(self, session: Session, role: Role) -> None:
        """Take back the marks of the rows of reports neither sent nor skipped (before the commit)."""
        if self._unused:
            unclaim(session, role, sorted(self._unused))

    def _take(self, ids: list[int]) -> bool:
        """The report's rows, all or none: False if another run marked any of them first."""
        if not self._claimed.issuperset(ids):
            return False
        self._unused.difference_update(ids)
        return True

    def keep(self, key: _Key, why: str, level: int = logging.INFO) -> None:
        """Nothing marked: the rows wait for the next run."""
        self.summary.kept += 1
        log.log(level, "tls reports: %s: kept for the next run: %s", key, why)

    def skip(self, key: _Key, rows: list[TLSResult], why: str) -> None:
        """No report for these rows, ever: mark them (unless another run just did) and log why."""
        if not self._take([r.id for r in rows]):
            return
        level = logging.WARNING if why.startswith("invalid") else logging.INFO

        def done() -> None:
            self.summary.skipped += 1
            log.log(level, "tls reports: %s: no report: %s", key, why)

        self._done.append(done)

    def send(self, session: Session, key: _Key, rows: list[TLSResult], planned: _Planned) -> None:
        """Mark the rows sent, then queue the mail and schedule the POSTs (committed with the chunk)."""
        report = planned.report
        ids = [r.id for r in rows]
        if not self._take(ids):
            log.info("tls reports: report %s: already taken by another run", report.id)
            return
        due = self.job.now + min(self.scheduled * self.spacing, SEND_WINDOW)
        self._queue(session, planned, due)
        self.scheduled += 1
        self._chunk_reports.append(report.id)
        cid = new_cid()
        self._done.append(lambda: self._log(cid, planned, due))

    def committed(self) -> None:
        self.summary.reports += self._chunk_reports
        for done in self._done:
            done()
        self._reset()

    def queue_mail(self, session: Session) -> None:
        """Queue the chunk's report mails: their files written and fsync'd in one round, not one by one."""
        if self._mail:
            enqueue_many(session, self.job.config, self._mail)

    def rolled_back(self, error: SQLAlchemyError | OSError) -> None:
        self.summary.kept += len(self._done)
        self.scheduled -= len(self._chunk_reports)
        ids = ", ".join(self._chunk_reports) or "none"
        log.error("tls reports: a batch was rolled back, kept for the next run (reports: %s): %s", ids, error)
        self._reset()

    def _reset(self) -> None:
        self._done = []
        self._chunk_reports = []
        self._claimed = self._unused = set()
        self._mail = []

    def _queue(self, session: Session, planned: _Planned, due: datetime) -> None:
        report = planned.report
        for url in planned.https:
            add_post(
                session,
                report_id=report.id,
                policy_domain=report.policy_domain,
                url=url,
                payload=planned.gzipped,
                due=due,
            )
        if not planned.mailto:
            return
        report_mail = Queued(
            planned.message,
            self.report_sender.address,
            planned.mailto,
            kind="tls-report",
            next_attempt=due,
            max_attempts=MAX_REPORT_ATTEMPTS,
            # RFC 8460 §5.3: deliver the report despite TLS failures (the message says TLS-Required: No).
            require_tls=False,
        )
        self._mail.append(report_mail)

    def _log(self, cid: str, planned: _Planned, due: datetime) -> None:
        report = planned.report
        ok, failed = report.sessions
        if planned.mailto:
            metrics.reports_sent("tlsrpt", "mail")
        queued = fields(
            report_id=report.id,
            run_cid=self.summary.cid,
            domain=report.policy_domain,
            due=f"{due:%Y-%m-%d %H:%M:%S}",
            to=",".join([f"mailto:{a}" for a in planned.mailto] + planned.https),
            policies=len(report.policies),
            successful=ok,
            failed=failed,
            **({"left_out": ",".join(sorted(planned.left_out))} if planned.left_out else {}),
        )
        with cid_scope(cid):
            log.info("tls reports: report queued", extra=queued)


def _lookup_problem(domain: str, lookup: TLSRPTLookup) -> str:
    if lookup.status is LookupStatus.NONE:
        return f"{tlsrpt_name(domain)} has no TLSRPT record"
    found = "; ".join(repr(v) for v in lookup.found)
    return f"invalid TLSRPT record at {tlsrpt_name(domain)}: {lookup.reason} (found {found})"


async def send_tls_reports(
    config: Config,
    now: datetime | None = None,
    *,
    resolver: Resolver | None = None,
    spacing: timedelta | None = None,
) -> RunSummary:
    """Run the daily job once (the beat task and `postwarden tlsrpt send-reports`): for the days
    before today by the database's clock, or by `now` if given."""
    return await ReportJob(config, now, resolver=resolver, spacing=spacing).run()
