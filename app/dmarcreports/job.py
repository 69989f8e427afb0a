"""The hourly report run (SPEC R2.3-R2.8): one aggregate report per policy domain whose intervals ended.

A run at hour H reads, in one pass that the database merges and sorts by policy domain, every
evaluation of an interval that ended by H (leftovers of a failed run too) and younger than 48 h. Per
policy domain with a non-optional evaluation it looks up the domain's current DMARC record for the rua
addresses: a DNS temporary error keeps the evaluations for the next run, no rua discards them. The
lookups of all domains start before the database sorts, and run while it does.

Each report is queued in the transaction that claims (policy domain, H): a second worker racing in the
same hour fails the claim and sends nothing. A writer thread commits the reports a batch at a time
while the next batch is built and signed. The claimed evaluations (the domain's, up to the highest id
the run saw once every lower id was committed, see `settled_max_id`, of intervals ended by H) are
deleted in bulk at the end of the run, or by the next run if this one died first: deleting one
domain's rows at a time would rewrite most pages of the table once per domain. Reports are spread
over the hour through their first delivery time.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Update, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.auth.dkim import DKIMSigningError, Signer
from app.auth.dmarc import DMARCRecords
from app.auth.types import DMARCRecord
from app.config import Config
from app.db import session_factory, upsert_insert
from app.dmarcreports.evaluations import (
    Ended,
    Span,
    delete_id_slice,
    delete_reported,
    drop_all,
    drop_older_than,
    id_before_lowest,
    report_domains,
    report_row_groups,
    settled_max_id,
)
from app.dmarcreports.interval import whole_hour
from app.dmarcreports.mail import ReportMail, report_message, report_signer
from app.dmarcreports.rua import report_destinations
from app.dmarcreports.xml import Metadata, PolicyPublished, ReportWriter, Row
from app.dns import BulkTXT, DNSTemporaryError, Resolver, TXTSource, resolver_from_config
from app.jobs import DMARC_REPORTS, Run, report_run
from app.logs import fields, new_cid
from app.models import DMARCReportClaim
from app.models.base import utcnow
from app.queue.enqueue import Queued, enqueue_many
from app.reportsender import dmarc_report_sender
from app.reportsuppress import suppressed_addresses, suppression_key

log = logging.getLogger(__name__)

JOB_NAME = DMARC_REPORTS  # the registry's name (app/jobs.py): the status page finds the runs by it
MAX_AGE = timedelta(hours=48)
MAX_SPACING = timedelta(minutes=5)
SPREAD = timedelta(minutes=50)  # the last minutes of the hour belong to the next run
REPORT_ATTEMPTS = 5  # R2.6
CHUNK = 32  # policy domains whose reports are claimed and queued in one transaction
LOOKUPS = 64  # DNS lookups in flight at once
MAX_EXCLUDED = 10_000  # domains a run's final delete names as exceptions; beyond: by the claims
RECOVERY_SLICE = 100_000  # ids per delete when finishing a dead run's deletions
SKIPPED = "dmarc report address skipped policy_domain=%s address=%s reason=%s"
NOT_SIGNED = "dmarc report not signed, kept for the next run policy_domain=%s: %s"

C = DMARCReportClaim
T = TypeVar("T")


@dataclass
class RunSummary:
    cid: str
    run_hour: datetime
    reports: list[str] = field(default_factory=list)  # report ids queued
    kept: list[str] = field(default_factory=list)  # policy domains left for the next run
    discarded: list[str] = field(default_factory=list)  # policy domains whose evaluations were dropped
    claimed_elsewhere: list[str] = field(default_factory=list)
    purged: int = 0  # evaluations older than 48 h
    deleted: int = 0  # evaluations that went into reports or were discarded

    def outcome(self) -> str:
        return (
            f"{len(self.reports)} reports queued, {len(self.kept)} domains kept for the next run, "
            f"{len(self.discarded)} discarded, {len(self.claimed_elsewhere)} sent by another worker, "
            f"{self.deleted} evaluations done, {self.purged} older than 48 h dropped"
        )


@dataclass(frozen=True)
class DomainRows:
    """One policy domain's merged report rows."""

    policy_domain: str
    rows: list[Row]


@dataclass(frozen=True)
class Plan:
    """What DNS said about where a domain's report goes."""

    record: DMARCRecord | None = None
    addresses: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (uri, reason)
    keep: str = ""  # a reason to try again next run
    discard: str = ""  # a reason to drop the evaluations


class SharedLookups(DMARCRecords):
    """DMARC records for a whole run: concurrent lookups of one name (the parents every tree walk of
    a chunk's domains visits) share a single query instead of each making its own."""

    def __init__(self, resolver: Resolver, txt: TXTSource) -> None:
        super().__init__(resolver, txt)
        self._pending: dict[str, asyncio.Task[DMARCRecord | None]] = {}

    async def at(self, domain: str) -> DMARCRecord | None:
        if domain not in self._pending:
            self._pending[domain] = asyncio.ensure_future(super().at(domain))
        return await self._pending[domain]


@dataclass(frozen=True)
class Outcome:
    """A domain's evaluations go: into a report (mail), or are dropped (discard says why)."""

    policy_domain: str
    discard: str = ""
    mail: ReportMail | None = None
    message: bytes = b""
    addresses: list[str] = field(default_factory=list)
    report_cid: str = ""
    due: datetime | None = None  # the report's first delivery attempt


class _Run:
    def __init__(self, config: Config, resolver: Resolver, now: datetime, cid: str) -> None:
        self.config = config
        # A run looks each name up once (SharedLookups), so the resolver's cache would not serve it:
        # the lookups go over one socket (app/dns.py's BulkTXT), open while the run is.
        self.lookups = BulkTXT(resolver)
        self.records = SharedLookups(resolver, self.lookups)
        self.sessions = session_factory(config.resolved_database_url)
        self.sender = dmarc_report_sender(config)
        self.signer: Signer | None = None  # the keys, loaded once per run (`run`); None: unsigned
        self.signing_error: DKIMSigningError | None = None  # why they could not be loaded
        self.now = now
        self.cutoff = now - MAX_AGE
        self.summary = RunSummary(cid, whole_hour(now))
        self.max_id = 0
        self.spacing = timedelta(0)
        self.suppressed: set[str] = set()
        self.planned_reports = 0
        self.plans: dict[str, asyncio.Future[Plan]] = {}
        self.spans: dict[str, Span] = {}  # of every domain with ended evaluations
        self.excluded: set[str] = set()  # domains of the run whose evaluations stay

    @property
    def run_hour(self) -> datetime:
        return self.summary.run_hour

    async def run(self, spacing: timedelta | None) -> RunSummary:
        self.summary.deleted += finish_deletions(self.sessions)  # of a run that died before its end
        if self.sender.signing_domain is None or not self.sender.selectors:
            log.warning(
                "dmarc reports go out unsigned: no configured domain with DKIM selectors is %s or a parent",
                self.config.hostname,
            )
        try:
            self.signer = report_signer(self.sender)
        except DKIMSigningError as e:  # e.g. an unreadable key file: every domain is kept, with the error
            self.signing_error = e
        self.max_id = settled_max_id(self.sessions)
        async with self.lookups:
            await self.report(spacing)
            for unused in self.plans.values():  # domains whose evaluations went meanwhile
                unused.cancel()
        self.delete_done()
        return self.summary

    async def report(self, spacing: timedelta | None) -> None:
        """Build, sign and queue the reports, claiming their domains."""
        with self.sessions() as reader, ThreadPoolExecutor(1, "dmarc-report") as writer:
            # The database merges and sorts the rows (in a thread, see `outcomes`) while the old
            # evaluations are purged (the merge leaves them out: its result is the same either way)
            # and the domains are listed and their DNS lookups run.
            pending = chunks(self.reportable(reader), CHUNK)
            first = started_in_thread(None, next, pending, [])
            self.purge()
            self.start_lookups(spacing)
            committing: list[asyncio.Future[None]] = []
            async for outcomes in self.outcomes(pending, first):
                if len(committing) >= 2:  # bounded: at most two batches of built reports in memory
                    await committing.pop(0)
                # One writer thread commits batch after batch while the next is built.
                committing.append(started_in_thread(writer, self.commit, outcomes))
            await asyncio.gather(*committing)

    def delete_done(self) -> None:
        """Delete, in one pass over the ids this run saw, the evaluations of every domain it claimed.

        Said as "all ended evaluations up to max_id but those of the domains left alone" (kept for
        the next run, optional only, claimed by another worker): SQLite deletes that in one pass,
        where a subquery on the claims would make it collect every row first.
        """
        if len(self.excluded) > MAX_EXCLUDED:
            self.summary.deleted += finish_deletions(self.sessions)
            return
        with self.sessions.begin() as session:
            session.execute(mark_deleted(self.summary.cid))
            self.summary.deleted += delete_reported(session, self.ended(), self.excluded)

    def start_lookups(self, spacing: timedelta | None) -> None:
        """List the domains to report and start their DNS lookups; the reports' spacing follows."""
        with self.sessions() as session:
            self.suppressed = suppressed_addresses(session, "dmarc", self.now)
            self.spans = report_domains(session, self.ended())
        domains = [domain for domain, span in self.spans.items() if span.required]  # R2.1
        self.spacing = spacing if spacing is not None else min(MAX_SPACING, SPREAD / max(1, len(domains)))
        log.info("dmarc report run hour=%s domains=%d", f"{self.run_hour:%Y-%m-%d %H:00}", len(domains))
        lookups = asyncio.Semaphore(LOOKUPS)
        self.plans = {d: asyncio.ensure_future(self.plan(d, lookups)) for d in domains}

    async def outcomes(
        self, pending: Iterator[list[DomainRows]], fetch: asyncio.Future[list[DomainRows]]
    ) -> AsyncIterator[list[Outcome]]:
        """What to do with each domain, a batch at a time, in domain order; `fetch` reads the first.

        Batches are read in a thread: the first waits for the database's sort, during which the
        event loop keeps answering DNS (sqlite and psycopg release the GIL while they work); each
        next batch is read while this one's reports are built and signed.
        """
        try:
            while chunk := await fetch:
                fetch = started_in_thread(None, next, pending, [])
                yield [outcome for outcome in await self.decided(chunk) if outcome is not None]
        finally:
            await asyncio.wait([fetch])  # the reader's session closes after us: let its read end

    async def decided(self, chunk: list[DomainRows]) -> list[Outcome | None]:
        decided: list[Outcome | None] = []
        for domain_rows in chunk:
            domain = domain_rows.policy_domain
            span = self.spans.get(domain)
            # Optional evaluations only (R2.1); or gone from the listing: another run reported them.
            if span is None or not span.required:
                self.excluded.add(domain)
                continue
            decided.append(self.decide(domain_rows, span, await self.plans.pop(domain)))
        return decided

    def purge(self) -> None:
        """Drop evaluations older than 48 h, and claims whose work is done and old."""
        with self.sessions.begin() as session:
            self.summary.purged = drop_older_than(session, self.cutoff)
            session.execute(delete(C).where(C.run_hour < self.cutoff, C.evaluations_deleted.is_(True)))
        if self.summary.purged:
            log.info("dmarc evaluations older than 48 hours dropped count=%d", self.summary.purged)

    def ended(self) -> Ended:
        return Ended(self.max_id, self.run_hour, self.cutoff)

    def reportable(self, session: Session) -> Iterator[DomainRows]:
        """The ended evaluations merged into report rows, one domain at a time."""
        rows = report_row_groups(session, self.ended())
        for domain, grouped in itertools.groupby(rows, key=lambda r: r[0]):
            yield DomainRows(domain, [Row(*g[1:]) for g in grouped])

    async def plan(self, domain: str, lookups: asyncio.Semaphore) -> Plan:
        async with lookups:
            return await self.destinations(domain)

    async def destinations(self, domain: str) -> Plan:
        try:
            record = await self.records.at(domain)
            if record is None or not record.rua:
                return Plan(
                    record, discard="no DMARC record" if record is None else "no rua in its DMARC record"
                )
            destinations = await report_destinations(
                self.lookups, domain, list(record.rua), self.records.organizational_domain
            )
        except DNSTemporaryError as e:
            return Plan(keep=f"DNS temporary error: {e}")
        plan = Plan(record, tuple(destinations.addresses), tuple(destinations.skipped))
        if not destinations.addresses:
            if destinations.temporary_failure:
                return Plan(record, skipped=plan.skipped, keep="no destination could be verified now")
            return Plan(record, skipped=plan.skipped, discard="no usable report address")
        return plan

    def decide(self, domain_rows: DomainRows, span: Span, plan: Plan) -> Outcome | None:
        """What to do with a domain's evaluations, with its report built and signed; None: keep them."""
        domain = domain_rows.policy_domain
        for uri, reason in plan.skipped:
            log.info(SKIPPED, domain, uri, reason)
        if plan.keep:
            log.info("dmarc report postponed to the next run policy_domain=%s reason=%s", domain, plan.keep)
            self.keep(domain)
            return None
        addresses = self.unsuppressed(domain, plan.addresses)
        if plan.discard or not addresses:
            return Outcome(domain, discard=plan.discard or "every report address is suppressed")
        if self.signing_error is not None:  # e.g. an unreadable key file: the operator must act
            log.error(NOT_SIGNED, domain, self.signing_error)
            self.keep(domain)
            return None
        assert plan.record is not None  # a plan with addresses has its record
        return self.reported(domain_rows, span, plan.record, plan.skipped, addresses)

    def keep(self, domain: str) -> None:
        """The domain's evaluations stay for the next run."""
        self.summary.kept.append(domain)
        self.excluded.add(domain)

    def reported(
        self,
        domain_rows: DomainRows,
        span: Span,
        record: DMARCRecord,
        skipped: tuple[tuple[str, str], ...],
        addresses: list[str],
    ) -> Outcome:
        """The domain's report, built and signed, with its first delivery time."""
        domain = domain_rows.policy_domain
        report_cid = new_cid()
        report_id = f"{self.run_hour:%Y%m%d.%H}.{report_cid}"
        errors = [reason for _, reason in skipped]
        policy = published_policy(domain, record)
        mail = build_report(
            domain_rows, span, policy, self.config.hostname, self.sender.address, report_id, errors
        )
        message = report_message(mail, self.sender, addresses, self.now, self.signer)
        due = self.now + self.planned_reports * self.spacing
        self.planned_reports += 1
        return Outcome(
            domain, mail=mail, message=message, addresses=addresses, report_cid=report_cid, due=due
        )

    def unsuppressed(self, domain: str, addresses: Iterable[str]) -> list[str]:
        usable = []
        for address in addresses:
            if suppression_key(address) in self.suppressed:
                log.info(SKIPPED, domain, address, "on the suppression list")
            else:
                usable.append(address)
        return usable

    def commit(self, outcomes: list[Outcome]) -> None:
        """In the writer thread: claim the batch's domains and queue their reports, one transaction."""
        taken: list[Outcome] = []
        elsewhere: list[str] = []
        with self.sessions.begin() as session:
            claimed = claim(session, [self.claim_values(o) for o in outcomes]) if outcomes else set()
            for outcome in outcomes:
                if outcome.policy_domain in claimed:
                    taken.append(outcome)
                else:
                    elsewhere.append(outcome.policy_domain)
            reports = [self.queued(outcome) for outcome in taken if outcome.mail is not None]
            enqueue_many(session, self.config, reports)
        metrics.reports_sent("dmarc", "mail", len(reports))
        for domain in elsewhere:
            log.info("dmarc report already sent by another worker policy_domain=%s", domain)
        self.summary.claimed_elsewhere += elsewhere
        self.excluded.update(elsewhere)
        for outcome in taken:
            self.log_outcome(outcome)

    def queued(self, outcome: Outcome) -> Queued:
        """The report as the queue takes it (R2.6: marked as a DMARC report, at most 5 attempts)."""
        return Queued(
            outcome.message,
            self.sender.address,
            outcome.addresses,
            next_attempt=outcome.due,
            max_attempts=REPORT_ATTEMPTS,
            kind="dmarc-report",
        )

    def claim_values(self, outcome: Outcome) -> dict[str, object]:
        return {
            "policy_domain": outcome.policy_domain,
            "run_hour": self.run_hour,
            "run_cid": self.summary.cid,
            "max_id": self.max_id,
            "report_id": outcome.mail.report_id if outcome.mail else None,
            "claimed": utcnow(),
            "evaluations_deleted": False,
        }

    def log_outcome(self, outcome: Outcome) -> None:
        mail = outcome.mail
        if mail is None:
            log.info(
                "dmarc evaluations discarded",
                extra=fields(domain=outcome.policy_domain, reason=outcome.discard),
            )
            self.summary.discarded.append(outcome.policy_domain)
            return
        self.summary.reports.append(mail.report_id)
        queued = fields(
            domain=mail.policy_domain,
            report_cid=outcome.report_cid,
            report_id=mail.report_id,
            recipients=",".join(outcome.addresses),
            rows=mail.rows,
            messages=mail.messages,
            due=f"{outcome.due:%H:%M:%S}",
        )
        log.info("dmarc report queued", extra=queued)


def started_in_thread(
    executor: ThreadPoolExecutor | None, function: Callable[..., T], *args: object
) -> asyncio.Future[T]:
    """`function(*args)` started in `executor` (None: the loop's default) now, not when the event loop
    next runs as with asyncio.to_thread; it logs with the caller's context (the run's cid)."""
    call = functools.partial(contextvars.copy_context().run, function, *args)
    return asyncio.get_running_loop().run_in_executor(executor, call)


def chunks(items: Iterable[DomainRows], size: int) -> Iterator[list[DomainRows]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def claim(session: Session, claims: list[dict[str, object]]) -> set[str]:
    """Insert the claims in one statement; the policy domains claimed, without those another worker
    holds (the transaction goes on).

    On PostgreSQL an insert racing ours for the same key waits for our commit and then does nothing;
    on SQLite the first insert takes the database's write lock, which serializes the two runs.
    """
    statement = (
        upsert_insert(session, C.__table__)
        .on_conflict_do_nothing(index_elements=["policy_domain", "run_hour"])
        .returning(C.__table__.c.policy_domain)
    )
    # The claims as parameters, not in the statement: it is compiled once and cached, where a statement
    # with a run's values in it was compiled afresh for every batch (SQLAlchemy still sends one INSERT
    # with many VALUES, "insertmanyvalues").
    return set(session.scalars(statement, claims))


def finish_deletions(sessions: sessionmaker[Session]) -> int:
    """Delete the evaluations of claims whose deletion is not done (a run died); the number deleted.

    Per run, the claims are marked first and the delete then covers every claim of that run it sees,
    which includes the marked ones: a claim committed meanwhile may have its rows deleted before it
    is marked (harmless, the next pass marks it), never marked with its rows left behind. The rows
    go a slice of ids at a time: a DELETE with a subquery collects what it deletes in memory.
    """
    deleted = 0
    with sessions() as session:
        runs = session.execute(
            select(C.run_cid, C.run_hour, C.max_id).where(C.evaluations_deleted.is_(False)).distinct()
        ).all()
        low = id_before_lowest(session)
    for run_cid, run_hour, max_id in runs:
        with sessions.begin() as session:
            session.execute(mark_deleted(run_cid))
            claimed = select(C.policy_domain).where(C.run_cid == run_cid)
            for start in range(low, max_id, RECOVERY_SLICE):
                stop = min(start + RECOVERY_SLICE, max_id)
                deleted += delete_id_slice(session, start, stop, run_hour, claimed)
    return deleted


def mark_deleted(run_cid: str) -> Update:
    return (
        update(C)
        .where(C.run_cid == run_cid, C.evaluations_deleted.is_(False))
        .values(evaluations_deleted=True)
    )


def published_policy(domain: str, record: DMARCRecord) -> PolicyPublished:
    """The policy as published now: RFC 9990 2.3 lets a report note the final configuration seen."""
    return PolicyPublished(
        domain,
        record.p or "none",  # RFC 9989 4.10.1: a record without a usable p= but with rua= acts as p=none
        record.sp,
        record.np,
        record.adkim,
        record.aspf,
        record.testing,
        "treewalk",  # RFC 9989 discovery; the record is looked up at the policy domain itself
        record.fo,
    )


def build_report(
    domain_rows: DomainRows,
    span: Span,
    policy: PolicyPublished,
    host: str,
    email: str,
    report_id: str,
    errors: list[str],
) -> ReportMail:
    # The range ends at the last second of the latest interval (RFC 9990 date_range is inclusive).
    begin, end = int(span.begin.timestamp()), int(span.end.timestamp()) - 1
    writer = ReportWriter(Metadata(host, email, report_id, begin, end, errors), policy)
    writer.add_all(domain_rows.rows)
    gzipped = writer.finish()
    return ReportMail(domain_rows.policy_domain, report_id, begin, end, writer.rows, writer.messages, gzipped)


def start_delay() -> float:
    """Seconds after the whole hour at which a run starts (R2.3): 30 to 90, so that not every
    receiver's reports arrive in the same second."""
    return random.uniform(30, 90)


async def send_dmarc_reports(
    config: Config,
    now: datetime | None = None,
    spacing: timedelta | None = None,
    resolver: Resolver | None = None,
) -> RunSummary:
    """Run the hourly job once. `spacing` is the time between two reports' first delivery attempt
    (None: spread the run's reports over the hour, at most 5 minutes apart; 0: all due now). Every
    line logged carries the run's cid."""
    moment = now or utcnow()
    resolver = resolver or resolver_from_config(config.dns)

    async def work(run: Run) -> RunSummary:
        if config.no_outgoing_dmarc_reports:
            return drop_evaluations(config, run.cid, moment)
        return await _Run(config, resolver, moment, run.cid).run(spacing)

    url = config.resolved_database_url
    return await report_run(url, JOB_NAME, work, log=log, done="dmarc report run done: %s")


def drop_evaluations(config: Config, cid: str, now: datetime) -> RunSummary:
    """Reports are turned off: the evaluations stored before are dropped, none is reported."""
    with session_factory(config.resolved_database_url).begin() as session:
        dropped = drop_all(session)
    log.info("dmarc reports are disabled (no_outgoing_dmarc_reports); %d evaluations dropped", dropped)
    return RunSummary(cid, whole_hour(now), purged=int(dropped or 0))
