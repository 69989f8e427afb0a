"""The inbound (MX) handler: mail for our addresses only, authenticated and judged before the reply.

RCPT: a configured address (SPEC R1.2; special reporting and postmaster addresses included) → 250;
another address in one of our domains → 550 5.1.1; any other domain → 550 5.7.1 (no open relay).
DATA: SPF/DKIM/DMARC (inline: the reply depends on it), then the analysis (app/verdict: the report
check of mail to reporting addresses (R6.2), DMARC, rulesets, reputation, R3), Authentication-Results,
X-Postwarden-Reason and Received prepended, stored durably (R1.6), then a valid report is handed on
for parsing (R6.1) and the DMARC evaluation (R2.1), and the reply sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiosmtpd.smtp import Envelope, Session
from sqlalchemy.exc import SQLAlchemyError

from app.address import address_key, normalize_address
from app.auth.evaluate import authenticate
from app.auth.message import header_fields
from app.config import Config
from app.dns import Resolver
from app.inreports.intake import ReportMessage
from app.logs import fields
from app.smtpserver.evaluation import EvaluationHandOn, RecordEvaluation
from app.smtpserver.handler import BaseHandler, envelope_sender
from app.smtpserver.protocol import PostwardenSMTP
from app.store.files import MessageStore, StoreError, copy_file_ids
from app.verdict.analysis import Analysis, analyze
from app.verdict.types import Arrival, Recipient

log = logging.getLogger("app.smtpserver")

STORE_FAILED_REPLY = "451 4.3.0 The message could not be stored; try again later"

ParseReport = Callable[[ReportMessage], None]


class InboundHandler(BaseHandler):
    kind = "inbound"

    def __init__(
        self,
        config: Config,
        store: MessageStore,
        resolver: Resolver,
        record_evaluation: RecordEvaluation | None = None,
        parse_report: ParseReport | None = None,
    ) -> None:
        super().__init__(config)
        self.store = store
        self.resolver = resolver
        self.parse_report = parse_report
        self.hand_on_evaluation = (
            None if record_evaluation is None else EvaluationHandOn(config, store, record_evaluation)
        )
        self.local_domains = set(config.domains) | {config.hostname}
        # Local parts are matched as configured first, then case-insensitively (RFC 5321 2.4 lets
        # the receiving host decide; mail to "Admin@" bouncing would surprise every user).
        self._folded_addresses = {address_key(a): target for a, target in config.address_index.items()}

    def target_for(self, address: str) -> tuple[str, str] | None:
        """(account, mailbox) mail to a recipient address goes to, or None if it is not ours."""
        return self.config.account_for_address(address) or self._folded_addresses.get(address_key(address))

    async def handle_AUTH(
        self, server: PostwardenSMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> str:
        return "502 5.5.1 AUTH is not available on this port; use the submission port"

    async def handle_MAIL(
        self, server: PostwardenSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        problem = self.sender_problem(envelope, "" if address == "<>" else address)
        problem = problem or self.rate_refusal(server)  # SPEC R3.1: a range over its limits, early
        if problem:
            return problem
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: PostwardenSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address_key(address) == "postmaster":  # RFC 5321 4.5.1: <Postmaster> without a domain
            address = f"postmaster@{self.config.hostname}"
        problem = self.recipient_problem(envelope, address)
        if problem:
            return problem
        address = normalize_address(address)
        if self.target_for(address) is None:
            domain = address.rpartition("@")[2]
            if domain in self.local_domains:
                reply = f"550 5.1.1 <{address}>: no such user here"
            else:
                reply = f"550 5.7.1 <{address}>: relaying denied"
            sender = envelope_sender(envelope)
            refused = fields(ip=server.peer_ip, mail_from=f"<{sender}>", rcpt=f"<{address}>", reply=reply)
            log.info("inbound rcpt refused", extra=refused)
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    async def receive(
        self,
        server: PostwardenSMTP,
        session: Session,
        envelope: Envelope,
        content: bytes,
        transaction_id: str,
    ) -> tuple[str, str]:
        mail_from, helo = envelope_sender(envelope), session.host_name or ""
        headers = tuple(header_fields(content))  # parsed once: authentication and the store read them too
        outcome = await authenticate(
            self.resolver,
            authserv_id=self.config.hostname,
            remote_ip=server.peer_ip,
            helo=helo,
            mail_from=mail_from,
            message=content,
            fields=headers,
        )
        recipients = tuple(self._recipient(a) for a in envelope.rcpt_tos)
        arrival = Arrival(outcome, server.peer_ip, helo, mail_from, recipients, transaction_id, headers)
        try:  # the report check and reputation read: in a worker thread, never on the event loop
            analysis = await self.store.read(
                lambda session: analyze(self.config, arrival, session, message=content)
            )
        except SQLAlchemyError:
            log.exception("reputation analysis failed for %s", transaction_id)
            return "store-failed", STORE_FAILED_REPLY
        trace = self.trace_header(server, session, envelope, transaction_id)
        prefix = "".join(analysis.headers).encode("utf-8") + trace
        try:
            stored = await self.store.store_copies(
                content, analysis.copies, prefix=prefix, file_id=transaction_id, fields=headers
            )
        except StoreError:
            return "store-failed", STORE_FAILED_REPLY
        self._hand_on_report(analysis, transaction_id, stored)
        if self.hand_on_evaluation is not None:
            await self.hand_on_evaluation(arrival, analysis)
        return analysis.result, analysis.reply

    def _hand_on_report(self, analysis: Analysis, transaction_id: str, stored: list[str]) -> None:
        """The copy holding a valid report goes to the parsing task once stored (best effort: the
        sweep of app/inreports/intake.py, or `postwarden reports import`, finds a lost one)."""
        index, report = analysis.report_copy, analysis.report
        if self.parse_report is None or index is None or report is None:
            return
        file_id = copy_file_ids(transaction_id, len(analysis.copies))[index]
        if file_id not in stored:
            return
        try:
            self.parse_report(ReportMessage(file_id, report.kind))
        except Exception:
            log.exception("could not hand on report message %s", file_id)

    def _recipient(self, address: str) -> Recipient:
        target = self.target_for(address)
        assert target is not None  # RCPT accepted only such addresses
        return Recipient(address, *target)
