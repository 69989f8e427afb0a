"""One delivery run for a queue row (SPEC R4.1-R4.7).

`deliver(config, queue_id)` claims the row and more due rows for the same recipient domain (a lease:
no other worker delivers them meanwhile; short, and renewed by a heartbeat while the run works, see
app/queue/lease.py), resolves where the domain's mail goes (MX or a smarthost route), decides TLS
per host from MTA-STS and DANE (app/queue/tlspolicy.py), and sends the messages
over one connection per host, falling back to the next IP and host when a connection fails. Each
message's outcome is committed right after its SMTP transaction, so a crash repeats at most the
message in flight. A repeated or stale wake-up finds nothing to claim and does nothing.

Those commits do not wait for the disk (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit
off, on the run's own connection): a killed worker loses none of them, only a power failure can undo
the last ones, and then those messages are delivered again. Rows are removed only after delivery,
so mail is delivered at least once either way, and a commit per message costs no fsync.

Outcomes per recipient row: delivered (row removed, recipient recorded for reputation), permanent
failure or last attempt (row removed, failure DSN), temporary failure (retry with backoff; a delay
DSN after the 5th failed attempt). DSNs go only into local mailboxes (app/queue/dsn.py). TLS results
are recorded per session for both the recipient domain's and the MX host's policy, except for
deliveries of TLS reports and through smarthosts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Literal

from sqlalchemy import Connection, Select, exists, func, select
from sqlalchemy.orm import Session as DBSession

from app import metrics
from app.accounts import account_name
from app.auth.message import header_fields
from app.config import Config
from app.db import engine_for, session_scope
from app.dns import DNSTemporaryError, Resolver, resolver_from_config
from app.logs import fields
from app.models.base import utcnow
from app.queue import history, outgoing
from app.queue.backoff import RETRY_DELAYS, next_attempt_after, wants_delay_dsn
from app.queue.content import DatabaseContent, in_background, queue_content
from app.queue.dane import dane_for_mx
from app.queue.dsn import RecipientStatus, build_dsn, dsn_mailbox
from app.queue.lease import Heartbeat
from app.queue.mtasts import MTASTSResult, MTASTSSettings, policy_for_domain
from app.queue.outgoing import Claimed
from app.queue.routes import Destination, Hop, host_addresses, resolve_destination
from app.queue.smtpclient import (
    ClientOptions,
    DeliveryError,
    Reply,
    Session,
    SessionInfo,
    Target,
    open_session,
)
from app.queue.tlspolicy import ReportPolicy, TLSDecision, TLSFailure, TLSSettings, decide_tls
from app.reportsuppress import ReportKind, suppress_after_failure
from app.store.files import MailboxCopy, MessageStore, StoreError
from app.tlsreports.report import FailureDetail, PolicyRef
from app.tlsreports.results import SessionResult, record_tls_results

log = logging.getLogger(__name__)

# What a step may take beyond its own timeout (DNS, the database, storing a DSN) before the run
# counts as stuck and its lease is left to lapse.
STEP_MARGIN = 120.0
# TLSA records are published for port 25 (RFC 7672 §2.2); tests deliver to other ports, same names.
DANE_PORT = 25
_BARE_LF = re.compile(rb"(?<!\r)\n")
# Every this many outcomes, and when the run ends, the background thread (app/queue/content.py) gets
# the files finished meanwhile to remove and, on SQLite, a checkpoint to run; a crash in between
# leaves the files to the hourly orphan sweep and the checkpoint to the next writer.
HAND_OVER_EVERY = 100
# SQLite's own default for `PRAGMA wal_autocheckpoint` (pages), restored before the connection goes
# back to the pool.
SQLITE_AUTOCHECKPOINT = 1000


@dataclass
class Message:
    """One SMTP transaction: a message file, its sender and the queue rows of its recipients."""

    path: str
    sender: str
    rows: list[Claimed]
    content: bytes
    tls_required_no: bool

    @property
    def recipients(self) -> list[str]:
        return [row.recipient for row in self.rows]


@dataclass
class DeliveryReport:
    """What one run did, by queue row id."""

    delivered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    # After a full batch: a due row of the same domain still waiting, to wake the next run with
    # (wake-ups sent per batch can find their row taken and done by another run meanwhile).
    more_due: int | None = None


async def deliver(config: Config, queue_id: int, resolver: Resolver | None = None) -> DeliveryReport:
    """Deliver the row and its batch; idempotent (nothing to claim: nothing done)."""
    run = _Run(config, resolver or resolver_from_config(config.dns))
    try:
        await run.start(queue_id)
    finally:
        await run.close()
    return run.report


class _Run:
    def __init__(self, config: Config, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        delivery = config.delivery
        self.lease = timedelta(seconds=delivery.lease_seconds)
        self.options = ClientOptions(
            helo=config.hostname,
            connect_timeout=delivery.connect_timeout,
            command_timeout=delivery.command_timeout,
            transaction_timeout=delivery.transaction_timeout,
            ca_bundle=delivery.ca_bundle,
        )
        self.report = DeliveryReport()
        self.rows: list[Claimed] = []
        self._heartbeat: Heartbeat | None = None
        # One database session for the run, committed after every message.
        self._connection = outcome_connection(config.resolved_database_url)
        self.db = DBSession(bind=self._connection, expire_on_commit=False)
        self._at_once: Connection | None = None
        self._store: MessageStore | None = None
        self._accounts: dict[int, str | None] = {}
        # Rows per message file when claimed: a file whose rows are all ours needs no check later.
        self.rows_per_path: dict[str, int] = {}
        self.tls_policy = metrics.tls_policy_type(None)  # of the host tried last: the deliveries' label
        self.content = queue_content(config)
        # Ended content that waits for removal after its commit (files), and how many outcomes were
        # committed since the last hand-over to the background thread.
        self._ended: list[str] = []
        self._committed = 0

    async def start(self, queue_id: int) -> None:
        self.rows = outgoing.claim_batch(
            self.db, queue_id, lease=self.lease, batch_size=self.config.delivery.batch_size
        )
        if self.rows:
            self.rows_per_path = outgoing.rows_per_path(self.db, sorted({r.path for r in self.rows}))
            history.prune(self.db, self.config.delivery.history_days)  # once a run: one indexed DELETE
        self.db.commit()  # no transaction left open while DNS and policy lookups run
        if not self.rows:
            return
        domain, owner = self.rows[0].recipient_domain, self.rows[0].lease_owner
        assert owner is not None  # claim_batch returns the rows it leased
        url = self.config.resolved_database_url
        with Heartbeat(url, owner, self.lease, self._longest_step()) as self._heartbeat:
            await self._deliver_batch(domain, await self._load_messages(self.rows))
        if len(self.rows) >= self.config.delivery.batch_size:
            self.report.more_due = outgoing.next_due_id(self.db, domain)
            self.db.commit()

    def _longest_step(self) -> float:
        """Longer than any step of a run can take (the heartbeat's `stall_after`): a connection or a
        transaction, an MTA-STS fetch, plus a margin for DNS, the database and storing a DSN."""
        delivery = self.config.delivery
        return max(delivery.transaction_timeout, MTASTSSettings.from_config(delivery).timeout) + STEP_MARGIN

    def _step(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.step()

    async def _deliver_batch(self, domain: str, messages: list[Message]) -> None:
        try:
            destination = await resolve_destination(self.config.delivery, self.resolver, domain)
        except DeliveryError as e:
            log.info("delivery: no destination", extra=fields(domain=domain, error=str(e)))
            for message in messages:
                await self._settle(message, [e] * len(message.rows), remote=None)
            return
        self._step()
        sts = await self._mtasts(destination)
        for tls_required_no in (False, True):
            group = [m for m in messages if m.tls_required_no == tls_required_no]
            if group:
                await self._deliver_group(destination, sts, group, tls_required_no)

    async def close(self) -> None:
        self._hand_over()
        self.db.close()
        for connection in (self._connection, self._at_once):
            if connection is not None:
                restore_durability(connection)
                connection.close()
        if self._store is not None:
            await self._store.close()

    # Messages.

    async def _load_messages(self, rows: Sequence[Claimed]) -> list[Message]:
        """Group rows into transactions (same content and sender); rows whose file awaits its rename
        wait for the next sweep, rows whose content is gone fail (app/queue/content.py)."""
        grouped: dict[tuple[str, str], list[Claimed]] = {}
        for row in rows:
            grouped.setdefault((row.path, row.sender), []).append(row)
        messages = []
        for (path, sender), group in grouped.items():
            try:
                content = self.content.read(self._connection, path)
            except OSError as e:
                log.error("queue file %s of rows %s unreadable: %s", path, [r.id for r in group], e)
                lost = Message(path, sender, group, b"", tls_required_no=False)
                error = DeliveryError(f"message file unreadable: {e}", permanent=True, status="5.3.0")
                await self._settle(lost, [error] * len(group), remote=None)
                continue
            if content is None:
                self._release(path, group)
                continue
            content, tls_required_no = prepare_content(content)
            tls_required_no = tls_required_no or any(r.require_tls is False for r in group)
            messages.append(Message(path, sender, group, content, tls_required_no))
        self._connection.commit()  # content read from the database: no transaction open while delivering
        return messages

    def _release(self, path: str, group: list[Claimed]) -> None:
        """Give rows back, no attempt counted: the next sweep takes them once their file is in place."""
        ids = [r.id for r in group]
        log.info("queue file %s of rows %s not in place yet; left for the next sweep", path, ids)
        try:
            for row in group:
                outgoing.release(self._connection, row)
            self._connection.commit()
        except BaseException:
            self._connection.rollback()
            raise

    # Policies.

    async def _mtasts(self, destination: Destination) -> MTASTSResult | None:
        if any(hop.tls is not None for hop in destination.hops):
            return None  # a smarthost route: the recipient domain's policies do not apply
        settings = MTASTSSettings.from_config(self.config.delivery)
        url = self.config.resolved_database_url
        return await policy_for_domain(destination.domain, self.resolver, url, settings)

    async def _decide(
        self, destination: Destination, hop: Hop, sts: MTASTSResult | None, tls_required_no: bool
    ) -> TLSDecision:
        try:
            dane = await dane_for_mx(self.resolver, hop.host, destination.mx_authentic, DANE_PORT)
        except DNSTemporaryError as e:
            raise DeliveryError(f"TLSA lookup for {hop.host}: {e}", permanent=False, status="4.4.3") from e
        return decide_tls(destination.domain, hop.host, destination.mx_authentic, sts, dane, tls_required_no)

    # Sending.

    async def _deliver_group(
        self, destination: Destination, sts: MTASTSResult | None, group: list[Message], tls_required_no: bool
    ) -> None:
        pending = group
        unreached = f"no host of {destination.domain} could be reached"
        tries = _Tries(DeliveryError(unreached, permanent=False, status="4.4.1"))
        record = not all(row.is_tls_report for m in group for row in m.rows)
        for hop in destination.hops:
            if not pending:
                return
            try:
                pending = await self._deliver_to_host(
                    destination, hop, sts, pending, tls_required_no, record, tries
                )
            except DeliveryError as e:
                log.info(
                    "delivery: host failed",
                    extra=fields(domain=destination.domain, host=hop.host, error=str(e)),
                )
                tries.failed(e, hop.host)
        error = tries.outcome(tries.last, tries.remote)
        for message in pending:
            await self._settle(message, [error] * len(message.rows), tries.remote)

    async def _deliver_to_host(
        self,
        destination: Destination,
        hop: Hop,
        sts: MTASTSResult | None,
        pending: list[Message],
        tls_required_no: bool,
        record: bool,
        tries: _Tries,
    ) -> list[Message]:
        """Send to the host's addresses in turn; the messages left. DeliveryError: the host failed."""
        self._step()
        decision: TLSDecision | None = None
        settings = hop.tls
        if settings is None:
            decision = await self._decide(destination, hop, sts, tls_required_no)
            settings = decision.settings
        self.tls_policy = metrics.tls_policy_type(settings)
        if decision is not None and not decision.use_host:
            failure = decision.domain_failure or decision.host_failure
            reason = failure.reason if failure else decision.basis
            if record:
                self._record_tls(destination.domain, decision, None, connected=False, host=hop.host)
            raise DeliveryError(f"{hop.host} not used: {reason}", permanent=False, status="4.7.5")
        addresses = await host_addresses(self.resolver, hop.host)
        if not addresses:
            permanent = destination.implicit_mx  # RFC 5321 §5.1: no MX and no address: no such domain
            raise DeliveryError(
                f"{hop.host} has no address", permanent=permanent, status="5.1.2" if permanent else "4.4.4"
            )
        error: DeliveryError | None = None
        for ip in addresses:
            target = Target(hop.host, ip, hop.port)
            while pending:
                session = self._open(destination.domain, decision if record else None, target, settings)
                if isinstance(session, DeliveryError):
                    error = session
                    tries.failed(error, hop.host)
                    break
                before = len(pending)
                pending, error = await self._send_all(session, pending, hop.host, tries)
                if error is not None:
                    tries.failed(error, hop.host)
                if len(pending) == before:
                    break  # nothing went over this connection: the next address
                # Some went, then the server ended the session (e.g. a limit of messages per
                # connection): a new connection to the same address takes the rest.
            if not pending:
                return []
        # Every address failed to connect, or broke the connection, with messages still pending.
        assert error is not None
        raise error

    def _open(
        self, domain: str, decision: TLSDecision | None, target: Target, settings: TLSSettings
    ) -> Session | DeliveryError:
        """A session with the target, its TLS result recorded when `decision` says how."""
        self._step()
        try:
            session = open_session(target, settings, self.options)
        except DeliveryError as e:
            if decision is not None:
                failure, connected = e.tls_failure, e.tls_failure is not None
                self._record_tls(
                    domain, decision, e.session_info, connected=connected, host=target.host, failure=failure
                )
            return e
        if decision is not None:
            info = session.info
            self._record_tls(
                domain, decision, info, connected=True, host=target.host, failure=info.tls_failure
            )
        return session

    async def _send_all(
        self, session: Session, pending: list[Message], remote: str, tries: _Tries
    ) -> tuple[list[Message], DeliveryError | None]:
        """Send messages until done or the connection breaks; (messages left, the break). A message
        refused for good is retried instead when an earlier host or address failed temporarily."""
        left = list(pending)
        try:
            while left:
                message = left[0]
                self._step()
                try:
                    results = session.send(message.sender, message.recipients, message.content)
                except DeliveryError as e:
                    if not e.permanent:
                        return left, e  # the connection broke: the rest go to the next address or host
                    refused = tries.outcome(e, remote)
                    await self._settle(message, [refused] * len(message.rows), remote, session.info)
                else:
                    outcomes = [
                        None if r.delivered else tries.outcome(r.reply.error("recipient"), remote)
                        for r in results
                    ]
                    replies = [r.reply for r in results]
                    await self._settle(message, outcomes, remote, session.info, replies)
                left.pop(0)
        finally:
            session.close()
        return left, None

    # Outcomes.

    async def _settle(
        self,
        message: Message,
        outcomes: Sequence[DeliveryError | None],
        remote: str | None,
        info: SessionInfo | None = None,
        replies: Sequence[Reply] = (),
    ) -> None:
        """Store the DSN (if any), then commit the rows' outcome: a crash may repeat a DSN, never lose one.
        `info` is the session's (when one was open), `replies` the server's reply per row (when the
        transaction went through): with the outcomes, they make the delivery history."""
        now = utcnow()
        statuses = []
        is_report = any(r.is_dmarc_report or r.is_tls_report for r in message.rows)
        plans: list[tuple[Claimed, DeliveryError | None, bool]] = []
        for row, error in zip(message.rows, outcomes, strict=True):
            final = error is not None and (error.permanent or row.attempts + 1 >= row.max_attempts)
            plans.append((row, error, final))
            if error is None:
                continue
            if final:
                statuses.append(_status(row, error, "failed", remote, now))
            elif wants_delay_dsn(row.attempts + 1, is_report):
                statuses.append(_status(row, error, "delayed", remote, now, _retry_until(row, now)))
        if statuses:
            await self._store_dsn(message, statuses, now)
        # Core statements straight on the run's connection: per message, the ORM session would cost
        # more than the statements themselves.
        finals = [final for _, _, final in plans]
        relay = history.Relay.of(remote, info)
        attempts = history.attempts_of(message.rows, outcomes, finals, replies, relay, now)
        at_once = self._at_once_connection()
        if at_once is not None and len(plans) == 1 and (plans[0][1] is None or plans[0][2]):
            left = self._end_at_once(at_once, message, plans[0], attempts[0])
        else:
            left = self._write_outcomes(message, plans, attempts, now)
        if left is not None:
            self._ended.append(left)
        self._committed += 1
        if self._committed >= HAND_OVER_EVERY:
            self._hand_over()
        self._suppress_failed_report_addresses(plans, now)

    def _write_outcomes(
        self,
        message: Message,
        plans: Sequence[tuple[Claimed, DeliveryError | None, bool]],
        attempts: Sequence[history.Attempt],
        now: datetime,
    ) -> str | None:
        """The message's outcomes in one transaction on the run's connection; the content left to
        remove after the commit, if any."""
        connection = self._connection
        try:
            history.record(connection, attempts)
            held = [
                self._write_outcome(connection, row, error, final, now, attempt)
                for (row, error, final), attempt in zip(plans, attempts, strict=True)
            ]
            # Rows another run holds now (our lease lapsed) still need the content.
            unused = all(final or error is None for _, error, final in plans) and all(held)
            unused = unused and self._file_unused(message, connection)
            left = self.content.end(connection, message.path) if unused else None
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        return left

    def _end_at_once(
        self,
        connection: Connection,
        message: Message,
        plan: tuple[Claimed, DeliveryError | None, bool],
        attempt: history.Attempt,
    ) -> str | None:
        """The common case on PostgreSQL, a message to one recipient whose row ends (delivered or
        failed for good): the attempt recorded, the row removed if the lease still holds, the
        recipient counted and the content ended (if the row was ours) in one statement, committed on
        its own (autocommit): one round trip where the transaction takes four (BEGIN, INSERT, DELETE,
        COMMIT), and as atomic. The content left to remove, if any."""
        row, error, final = plan
        account_id = _sent_account(row) if error is None else None
        unused = self._file_unused(message, connection)
        database = self.content if unused and isinstance(self.content, DatabaseContent) else None
        params = {**outgoing.finish_params(row), **attempt.values()}
        if account_id is not None:
            params.update(outgoing.sent_params(account_id, row.recipient))
        if database is not None:
            params.update(database.end_params(message.path))
        statement = _outcome_statement(account_id is not None, database is not None)
        held = bool(connection.execute(statement, params).scalar())
        self._count_outcome(row, error, final, attempt, held)
        ended = unused and held and database is None
        return self.content.end(connection, message.path) if ended else None

    def _at_once_connection(self) -> Connection | None:
        """PostgreSQL: the run's autocommit connection for `_end_at_once`, opened on first use."""
        if self._at_once is None and self._connection.dialect.name == "postgresql":
            self._at_once = outcome_connection(self.config.resolved_database_url, autocommit=True)
        return self._at_once

    def _hand_over(self) -> None:
        """Leave the work that follows committed outcomes to the background thread: removing the
        content they ended and, on SQLite, the checkpoint (see `outcome_connection`)."""
        self.content.remove_soon(self._ended)
        if self._committed and self._connection.dialect.name == "sqlite":
            in_background(checkpoint, self.config.resolved_database_url)
        self._ended, self._committed = [], 0

    def _suppress_failed_report_addresses(
        self, plans: Sequence[tuple[Claimed, DeliveryError | None, bool]], now: datetime
    ) -> None:
        """R2.7: no more reports, for a while, to an address that could not take one."""
        failed = [(row, error) for row, error, final in plans if final and error is not None]
        for row, error in failed:
            if row.is_dmarc_report or row.is_tls_report:
                kind: ReportKind = "dmarc" if row.is_dmarc_report else "tlsrpt"
                suppress_after_failure(self.db, kind, row.recipient, str(error), now)
                self.db.commit()

    def _file_unused(self, message: Message, connection: Connection) -> bool:
        """Whether no other row needs the message's file, once this message's rows are finished."""
        if self.rows_per_path.get(message.path) == len(message.rows):
            return True
        # Two workers finishing rows of one file at the same moment may each still see the other's
        # row and both keep the file; the hourly orphan cleanup removes it then.
        return not outgoing.path_in_use(connection, message.path)

    def _write_outcome(
        self,
        session: Connection,
        row: Claimed,
        error: DeliveryError | None,
        final: bool,
        now: datetime,
        attempt: history.Attempt,
    ) -> bool:
        """Write the row's outcome; whether the row was still ours (its lease held)."""
        held = True  # a postponed row whose lease was lost is simply due again for its new holder
        if error is None or final:
            held = outgoing.finish(session, row)
            account_id = _sent_account(row) if error is None else None
            if account_id is not None:
                outgoing.record_sent_recipient(session, account_id, row.recipient)
        else:
            outgoing.postpone(session, row, str(error), next_attempt_after(row.attempts + 1, now))
        self._count_outcome(row, error, final, attempt, held)
        return held

    def _count_outcome(
        self,
        row: Claimed,
        error: DeliveryError | None,
        final: bool,
        attempt: history.Attempt,
        held: bool,
    ) -> None:
        """The metrics, the run's report and the log line of an outcome written."""
        if not held:
            log.warning("queue row %d: lease lost before its outcome was written", row.id)
        result = "delivered" if error is None else "failed" if final else "deferred"
        metrics.delivery(result, self.tls_policy)
        report = self.report
        kept = report.delivered if error is None else report.failed if final else report.deferred
        kept.append(row.id)
        self._log_outcome(row, result, error, attempt)

    def _log_outcome(
        self, row: Claimed, result: str, error: DeliveryError | None, attempt: history.Attempt
    ) -> None:
        outcome = fields(
            queue_id=row.id,
            message_id=attempt.file_id,
            to=f"<{row.recipient}>",
            domain=row.recipient_domain,
            result=result,
            attempt=row.attempts + 1,
            tls_policy=self.tls_policy,
            **({} if error is None else {"error": str(error)}),
            **attempt.log_fields(),
        )
        log.info("delivery %s", result, extra=outcome)

    async def _store_dsn(self, message: Message, statuses: list[RecipientStatus], now: datetime) -> None:
        row = message.rows[0]
        account = self._account_name(row.account_id)
        target = dsn_mailbox(self.config, account, row.is_dmarc_report, row.is_tls_report)
        if target is None:
            log.warning("no DSN for %s: not sent by a local account", message.path)
            return
        dsn = build_dsn(
            hostname=self.config.hostname,
            sender=message.sender,
            original=message.content,
            statuses=statuses,
            arrival=row.created,
            now=now,
        )
        columns = {"seen": target.seen, "msg_from": f"postmaster@{self.config.hostname}"}
        try:
            await self._dsn_store().store_copies(dsn, [MailboxCopy(target.account, target.mailbox, columns)])
        except StoreError as e:
            log.error("DSN for %s to %s/%s not stored: %s", message.path, target.account, target.mailbox, e)

    def _dsn_store(self) -> MessageStore:
        if self._store is None:
            self._store = MessageStore.of(self.config)
        return self._store

    def _account_name(self, account_id: int | None) -> str | None:
        if account_id is None:
            return None
        if account_id not in self._accounts:
            self._accounts[account_id] = account_name(self.db, account_id)
            self.db.commit()
        return self._accounts[account_id]

    # TLS results.

    def _record_tls(
        self,
        domain: str,
        decision: TLSDecision,
        info: SessionInfo | None,
        *,
        connected: bool,
        host: str,
        failure: TLSFailure | None = None,
    ) -> None:
        detail = _session_failure(info, failure) if failure is not None else None
        # A failed certificate check is the checking policy's only (tlspolicy.TLSDecision.failure_owner).
        owner = decision.failure_owner(failure) if failure is not None else None
        result = SessionResult(
            recipient_domain=domain,
            domain_policy=_policy_ref(decision.domain_policy),
            host_policy=_policy_ref(decision.host_policy),
            failure=detail if owner is None else None,
            domain_failure=_known_failure(decision.domain_failure, host) or _owned(detail, owner, "domain"),
            host_failure=_known_failure(decision.host_failure, host) or _owned(detail, owner, "host"),
            connected=connected,
        )
        # Its own short transaction, apart from the run's: a failure here (a value the database
        # refuses, a table gone) is logged and costs the report one count, never the delivery.
        try:
            with session_scope(self.config.resolved_database_url) as session:
                record_tls_results(session, [result])
        except Exception as e:  # whatever the database says, the mail goes on
            log.error("TLS result for %s via %s not recorded: %s", domain, host, outgoing.database_error(e))


class _Tries:
    """The failures of the hosts and addresses tried so far for a group of messages.

    A permanent failure stands only when every host tried failed permanently: a backup MX that
    refuses mail for a domain it does not serve must not bounce a message the primary, down for the
    moment, will take on a later attempt. The retry schedule (max_attempts) still ends it.
    """

    def __init__(self, nothing_tried: DeliveryError) -> None:
        self.last = nothing_tried
        self.remote: str | None = None
        self.temporary: tuple[str, DeliveryError] | None = None  # the first temporary failure

    def failed(self, error: DeliveryError, host: str) -> None:
        self.last, self.remote = error, host
        if not error.permanent and self.temporary is None:
            self.temporary = (host, error)

    def outcome(self, error: DeliveryError, host: str | None) -> DeliveryError:
        """`error` (from `host`), made temporary when it is permanent but another host failed
        temporarily before; another address of the same host failing does not count (its answer for
        good is the host's)."""
        if not error.permanent or self.temporary is None or self.temporary[0] == host:
            return error
        host, earlier = self.temporary
        softened = DeliveryError(
            f"{error} (retried: {host} failed temporarily: {earlier})",
            permanent=False,
            status="4" + error.status[1:],
            diagnostic=error.diagnostic,
        )
        softened.session_info = error.session_info
        return softened


def outcome_connection(url: str, *, autocommit: bool = False) -> Connection:
    """A pooled connection whose commits do not wait for the disk (see the module doc); with
    `autocommit`, each statement commits on its own (the pool restores the isolation level).

    On SQLite not even for a checkpoint: the commit that fills the WAL past its limit would copy it
    into the database file and fsync both, stalling that message by milliseconds; a run leaves its
    checkpoints to the background thread instead (`_Run._hand_over`)."""
    connection = engine_for(url).connect()
    if autocommit:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
        connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET synchronous_commit TO off")
    connection.commit()
    return connection


def restore_durability(connection: Connection) -> None:
    """Back to the engine's settings before the connection returns to the pool."""
    connection.rollback()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA synchronous=FULL")
        connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT}")
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql("RESET synchronous_commit")
    connection.commit()


def checkpoint(url: str) -> None:
    """Copy the SQLite WAL into the database file as far as no reader needs it (PASSIVE: it waits
    for nobody), as the automatic checkpoint would have; a failure leaves it to the next one."""
    try:
        with engine_for(url).connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    except Exception as e:  # in the background thread: logged, the WAL waits for the next checkpoint
        log.warning("SQLite checkpoint failed: %s", outgoing.database_error(e))


def prepare_content(content: bytes) -> tuple[bytes, bool]:
    """CRLF line endings, and the `TLS-Required: No` header field (RFC 8689) taken out; (content, had it)."""
    if content.count(b"\n") != content.count(b"\r\n"):  # two C loops: far faster than the regex
        content = _BARE_LF.sub(b"\r\n", content)
    if b"tls-required" not in content[: content.find(b"\r\n\r\n")].lower():
        return content, False
    no = any(n.lower() == "tls-required" and v.strip().lower() == "no" for n, v in header_fields(content))
    return (remove_header(content, b"tls-required"), True) if no else (content, False)


def remove_header(content: bytes, name: bytes) -> bytes:
    """The message without the header field `name` (all occurrences, with continuation lines)."""
    end = content.find(b"\r\n\r\n")
    head, rest = (content, b"") if end < 0 else (content[: end + 2], content[end + 2 :])
    kept, skipping = [], False
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() == name
        if not skipping:
            kept.append(line)
    return b"".join(line + b"\r\n" for line in kept) + rest


def _sent_account(row: Claimed) -> int | None:
    """The account whose delivery to the row's recipient counts for reputation (reports do not)."""
    return None if row.is_dmarc_report or row.is_tls_report else row.account_id


@cache
def _outcome_statement(sent: bool, content_in_database: bool) -> Select[int]:
    """`_Run._end_at_once`'s statement, built once per shape: the attempt recorded, the row finished
    (how many rows: 0 if the lease was lost), the recipient counted and the content ended, as the
    shape says. PostgreSQL runs each part to its end whether the result reads it or not."""
    finished = outgoing.finish_cte()
    statement = select(func.count()).select_from(finished).add_cte(history.record_cte())
    if sent:
        statement = statement.add_cte(outgoing.sent_cte())
    if content_in_database:
        statement = statement.add_cte(DatabaseContent.end_cte(exists(finished.select())))
    return statement


def _status(
    row: Claimed,
    error: DeliveryError,
    action: Literal["failed", "delayed"],
    remote: str | None,
    now: datetime,
    retry_until: datetime | None = None,
) -> RecipientStatus:
    diagnostic = error.diagnostic or f"X-Postwarden; {error}"
    return RecipientStatus(row.recipient, action, error.status, diagnostic, remote, now, retry_until)


def _retry_until(row: Claimed, now: datetime) -> datetime:
    """When the last attempt is due if every remaining one fails."""
    until = now
    for failed in range(row.attempts + 1, row.max_attempts):
        until += RETRY_DELAYS[min(failed, len(RETRY_DELAYS)) - 1]
    return until


def _policy_ref(policy: ReportPolicy) -> PolicyRef:
    return PolicyRef(policy.policy_type, policy.policy_domain, policy.policy_string, policy.mx_host)


def _known_failure(failure: TLSFailure | None, host: str) -> FailureDetail | None:
    if failure is None:
        return None
    return FailureDetail(failure.result_type, receiving_mx_hostname=host, failure_reason_code=failure.reason)


def _owned(detail: FailureDetail | None, owner: str | None, policy: str) -> FailureDetail | None:
    return detail if owner == policy else None


def _session_failure(info: SessionInfo | None, failure: TLSFailure) -> FailureDetail:
    return FailureDetail(
        failure.result_type,
        sending_ip=info.sending_ip if info else None,
        receiving_mx_hostname=info.target.host if info else None,
        receiving_mx_helo=info.receiving_helo if info else None,
        receiving_ip=info.target.ip if info else None,
        failure_reason_code=failure.reason,
    )
