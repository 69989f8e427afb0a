"""The hourly report run (SPEC R2.3-R2.8): one aggregate report per policy domain whose intervals ended.

A run at hour H reads, in one pass that the database merges and sorts by policy domain, every
evaluation of an interval that ended by H (leftovers of a failed run too) and younger than 48 h. Per
policy domain with a non-optional evaluation it looks up the domain's current DMARC record for the rua
addresses: a DNS temporary error keeps the evaluations for the next run, no rua discards them.

Each report is queued in the transaction that claims (policy domain, H): a second worker racing in the
same hour fails the claim and sends nothing. The claimed evaluations (the domain's, up to the highest
id the run saw, of intervals ended by H) are deleted in bulk at the end of the run, or by the next run
if this one died first; deleting rows one domain at a time would touch every page of the table once
per domain. Reports are spread over the hour through their first delivery time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, case, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.auth.dmarc import _Records as DMARCRecords
from app.auth.types import DMARCRecord
from app.config import Config
from app.db import session_factory
from app.dmarcreports.interval import whole_hour
from app.dmarcreports.mail import ReportMail, report_message, report_sender
from app.dmarcreports.rua import report_destinations
from app.dmarcreports.xml import Metadata, PolicyPublished, ReportWriter, Row
from app.dns import DNSTemporaryError, Resolver, resolver_from_config
from app.logs import cid_scope, new_cid
from app.models import DMARCEvaluation, DMARCReportClaim, JobRun
from app.models.base import utcnow
from app.queue.outgoing import enqueue_report
from app.reportsuppress import is_suppressed

log = logging.getLogger(__name__)

JOB_NAME = "send_dmarc_reports"  # as the status page names it
MAX_AGE = timedelta(hours=48)
MAX_SPACING = timedelta(minutes=5)
SPREAD = timedelta(minutes=50)  # the last minutes of the hour belong to the next run
REPORT_ATTEMPTS = 5  # R2.6
LOOKUP_CHUNK = 64  # policy domains whose DNS lookups run concurrently
SKIPPED = "dmarc report address skipped policy_domain=%s address=%s reason=%s"

E = DMARCEvaluation
C = DMARCReportClaim
ROW_COLUMNS = (
    E.source_ip,
    E.disposition,
    E.requested_disposition,
    E.dkim_aligned,
    E.spf_aligned,
    E.override_reasons,
    E.envelope_to,
    E.envelope_from,
    E.header_from,
    E.dkim_results,
    E.spf_results,
)


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
    """One policy domain's merged report rows, with what the report header needs."""

    policy_domain: str
    rows: list[Row]
    begin: datetime  # the earliest interval start
    end: datetime  # the latest interval end (exclusive)
    required: int  # non-optional evaluations: none means no report (R2.1)


@dataclass(frozen=True)
class Plan:
    """What DNS said about where a domain's report goes."""

    record: DMARCRecord | None = None
    addresses: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (uri, reason)
    keep: str = ""  # a reason to try again next run
    discard: str = ""  # a reason to drop the evaluations


class _Run:
    def __init__(self, config: Config, resolver: Resolver, now: datetime, cid: str) -> None:
        self.config = config
        self.resolver = resolver
        self.records = DMARCRecords(resolver)  # one cache per run: shared rua hosts are looked up once
        self.sessions = session_factory(config.resolved_database_url)
        self.sender = report_sender(config)
        self.now = now
        self.cutoff = now - MAX_AGE
        self.summary = RunSummary(cid, whole_hour(now))
        self.max_id = 0
        self.spacing = timedelta(0)

    @property
    def run_hour(self) -> datetime:
        return self.summary.run_hour

    async def run(self, spacing: timedelta | None) -> RunSummary:
        self.summary.deleted += finish_deletions(self.sessions)  # of a run that died before its end
        self.purge()
        if self.sender.signing_domain is None or not self.sender.selectors:
            log.warning(
                "dmarc reports go out unsigned: no configured domain with DKIM selectors is %s or a parent",
                self.config.hostname,
            )
        with self.sessions() as session:
            self.max_id = session.scalar(select(func.max(E.id))) or 0
            self.spacing = spacing if spacing is not None else self.default_spacing(session)
        log.info("dmarc report run hour=%s", f"{self.run_hour:%Y-%m-%d %H:00}")
        with self.sessions() as reader:
            for chunk in chunks(self.reportable(reader), LOOKUP_CHUNK):
                plans = await asyncio.gather(*(self.plan(d.policy_domain) for d in chunk))
                for domain_rows, plan in zip(chunk, plans, strict=True):
                    self.settle(domain_rows, plan)
        self.summary.deleted += finish_deletions(self.sessions)
        return self.summary

    def purge(self) -> None:
        """Drop evaluations older than 48 h, and claims whose work is done and old."""
        with self.sessions.begin() as session:
            self.summary.purged = session.execute(delete(E).where(E.evaluated < self.cutoff)).rowcount or 0
            session.execute(delete(C).where(C.run_hour < self.cutoff, C.evaluations_deleted.is_(True)))
        if self.summary.purged:
            log.info("dmarc evaluations older than 48 hours dropped count=%d", self.summary.purged)

    def selected(self) -> list[ColumnElement[bool]]:
        return [E.id <= self.max_id, E.interval_end <= self.run_hour, E.evaluated >= self.cutoff]

    def default_spacing(self, session: Session) -> timedelta:
        """Spread this run's reports over the hour, at most 5 minutes apart (R2.3)."""
        domains = session.scalar(
            select(func.count(E.policy_domain.distinct())).where(*self.selected(), E.optional.is_(False))
        )
        return min(MAX_SPACING, SPREAD / max(1, domains or 0))

    def reportable(self, session: Session) -> Iterator[DomainRows]:
        """The ended evaluations merged into report rows, one domain at a time; optional-only skipped."""
        required = func.sum(case((E.optional.is_(False), 1), else_=0))
        query = (
            select(E.policy_domain, func.min(E.interval_start), func.max(E.interval_end), required)
            .add_columns(func.count(), *ROW_COLUMNS)
            .where(*self.selected())
            .group_by(E.policy_domain, E.record_key, *ROW_COLUMNS)
            .order_by(E.policy_domain)
            .execution_options(yield_per=2000)
        )
        for domain, grouped in itertools.groupby(session.execute(query), key=lambda r: r[0]):
            groups = list(grouped)
            domain_rows = DomainRows(
                domain,
                [Row(*g[4:]) for g in groups],
                min(g[1] for g in groups),
                max(g[2] for g in groups),
                sum(g[3] for g in groups),
            )
            if domain_rows.required:
                yield domain_rows

    async def plan(self, domain: str) -> Plan:
        try:
            record = await self.records.at(domain)
            if record is None or not record.rua:
                return Plan(
                    record, discard="no DMARC record" if record is None else "no rua in its DMARC record"
                )
            destinations = await report_destinations(
                self.resolver, domain, list(record.rua), self.records.organizational_domain
            )
        except DNSTemporaryError as e:
            return Plan(keep=f"DNS temporary error: {e}")
        plan = Plan(record, tuple(destinations.addresses), tuple(destinations.skipped))
        if not destinations.addresses:
            if destinations.temporary_failure:
                return Plan(record, skipped=plan.skipped, keep="no destination could be verified now")
            return Plan(record, skipped=plan.skipped, discard="no usable report address")
        return plan

    def settle(self, domain_rows: DomainRows, plan: Plan) -> None:
        domain = domain_rows.policy_domain
        for uri, reason in plan.skipped:
            log.info(
                "dmarc report address skipped policy_domain=%s address=%s reason=%s", domain, uri, reason
            )
        if plan.keep:
            log.info("dmarc report postponed to the next run policy_domain=%s reason=%s", domain, plan.keep)
            self.summary.kept.append(domain)
            return
        addresses = self.unsuppressed(domain, plan.addresses)
        if plan.discard or not addresses:
            self.discard(domain, plan.discard or "every report address is suppressed")
            return
        assert plan.record is not None  # a plan with addresses has its record
        self.send(domain_rows, plan.record, addresses, [reason for _, reason in plan.skipped])

    def unsuppressed(self, domain: str, addresses: Iterable[str]) -> list[str]:
        usable = []
        with self.sessions() as session:
            for address in addresses:
                if is_suppressed(session, "dmarc", address, self.now):
                    log.info(SKIPPED, domain, address, "on the suppression list")
                else:
                    usable.append(address)
        return usable

    def claim(self, session: Session, domain: str, report_id: str | None) -> None:
        claim(
            session,
            C(
                policy_domain=domain,
                run_hour=self.run_hour,
                run_cid=self.summary.cid,
                max_id=self.max_id,
                report_id=report_id,
            ),
        )

    def discard(self, domain: str, reason: str) -> None:
        try:
            with self.sessions.begin() as session:
                self.claim(session, domain, None)
        except ClaimedElsewhere:
            self.summary.claimed_elsewhere.append(domain)
            return
        log.info("dmarc evaluations discarded policy_domain=%s reason=%s", domain, reason)
        self.summary.discarded.append(domain)

    def send(
        self, domain_rows: DomainRows, record: DMARCRecord, addresses: list[str], errors: list[str]
    ) -> None:
        domain = domain_rows.policy_domain
        report_cid = new_cid()
        report_id = f"{self.run_hour:%Y%m%d.%H}.{report_cid}"
        mail = build_report(
            domain_rows,
            published_policy(domain, record),
            self.config.hostname,
            self.sender.address,
            report_id,
            errors,
        )
        # Built and signed before the transaction: the claim holds SQLite's write lock until commit.
        message = report_message(mail, self.sender, addresses, self.now)
        due = self.now + len(self.summary.reports) * self.spacing
        try:
            with self.sessions.begin() as session:
                self.claim(session, domain, report_id)
                enqueue_report(
                    session,
                    self.config,
                    message=message,
                    sender=self.sender.address,
                    recipients=addresses,
                    kind="dmarc",
                    due=due,
                    max_attempts=REPORT_ATTEMPTS,
                )
        except ClaimedElsewhere:
            log.info("dmarc report already sent by another worker policy_domain=%s", domain)
            self.summary.claimed_elsewhere.append(domain)
            return
        self.summary.reports.append(report_id)
        log.info(
            "dmarc report queued policy_domain=%s report_cid=%s report_id=%s recipients=%s rows=%d "
            "messages=%d due=%s",
            domain,
            report_cid,
            report_id,
            ",".join(addresses),
            mail.rows,
            mail.messages,
            f"{due:%H:%M:%S}",
        )


def chunks(items: Iterable[DomainRows], size: int) -> Iterator[list[DomainRows]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class ClaimedElsewhere(Exception):
    """Another worker claimed this policy domain for the run hour."""


def claim(session: Session, row: DMARCReportClaim) -> None:
    """Insert the claim as the transaction's first write; ClaimedElsewhere if the key is taken.

    On PostgreSQL a racing insert of the same key waits for ours to commit, then fails; on SQLite the
    insert takes the database's write lock, which serializes the two.
    """
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise ClaimedElsewhere(row.policy_domain) from None


def finish_deletions(sessions: sessionmaker[Session]) -> int:
    """Delete the evaluations of claims whose deletion is not done; the number deleted.

    Per run, the claims are marked first and the delete then covers every claim of that run it sees,
    which includes the marked ones: a claim committed meanwhile may have its rows deleted before it
    is marked (harmless, the next pass marks it), never marked with its rows left behind.
    """
    deleted = 0
    with sessions() as session:
        runs = session.execute(
            select(C.run_cid, C.run_hour, C.max_id).where(C.evaluations_deleted.is_(False)).distinct()
        ).all()
    for run_cid, run_hour, max_id in runs:
        with sessions.begin() as session:
            session.execute(
                update(C)
                .where(C.run_cid == run_cid, C.evaluations_deleted.is_(False))
                .values(evaluations_deleted=True)
            )
            claimed = select(C.policy_domain).where(C.run_cid == run_cid)
            covered = delete(E).where(
                E.id <= max_id, E.interval_end <= run_hour, E.policy_domain.in_(claimed)
            )
            deleted += session.execute(covered).rowcount or 0
    return deleted


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
    domain_rows: DomainRows, policy: PolicyPublished, host: str, email: str, report_id: str, errors: list[str]
) -> ReportMail:
    # The range ends at the last second of the latest interval (RFC 9990 date_range is inclusive).
    begin, end = int(domain_rows.begin.timestamp()), int(domain_rows.end.timestamp()) - 1
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
    sessions = session_factory(config.resolved_database_url)
    with cid_scope() as cid:
        started = utcnow()
        if config.no_outgoing_dmarc_reports:
            with sessions.begin() as session:
                dropped = session.execute(delete(E)).rowcount  # stored before reports were turned off
            log.info(
                "dmarc reports are disabled (no_outgoing_dmarc_reports); %d evaluations dropped", dropped
            )
            summary = RunSummary(cid, whole_hour(moment), purged=int(dropped or 0))
        else:
            summary = await _Run(config, resolver, moment, cid).run(spacing)
        log.info("dmarc report run done: %s", summary.outcome())
        with sessions.begin() as session:
            session.add(
                JobRun(job=JOB_NAME, cid=cid, started=started, finished=utcnow(), outcome=summary.outcome())
            )
        return summary
