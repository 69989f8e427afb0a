"""SQLAlchemy models, one module per area. Importing this package registers them all on Base."""

from app.models.base import Base
from app.models.dmarc import DMARCEvaluation, DMARCReportClaim, ReportSuppression
from app.models.inreport_rollups import (
    DMARCDayTotal,
    DMARCReporterDay,
    DMARCSourceReporterTotal,
    DMARCSourceTotal,
    TLSFailureDay,
    TLSPolicyDay,
)
from app.models.inreports import DMARCReport, DMARCReportRecord, TLSReport, TLSReportFailure, TLSReportPolicy
from app.models.jobs import JobRun
from app.models.logins import LoginFailure, WebSession
from app.models.mtasts import MTASTSPolicy
from app.models.queue import OutgoingContent, OutgoingMessage, SentRecipient
from app.models.store import Account, Mailbox, MailboxSubscription, Message, MessageContent, MessageSignal
from app.models.tlsrpt import TLSFailureDetail, TLSReportPost, TLSResult

__all__ = [
    "Account",
    "Base",
    "DMARCDayTotal",
    "DMARCEvaluation",
    "DMARCReport",
    "DMARCReportClaim",
    "DMARCReportRecord",
    "DMARCReporterDay",
    "DMARCSourceReporterTotal",
    "DMARCSourceTotal",
    "JobRun",
    "LoginFailure",
    "MTASTSPolicy",
    "Mailbox",
    "MailboxSubscription",
    "Message",
    "MessageContent",
    "MessageSignal",
    "OutgoingContent",
    "OutgoingMessage",
    "ReportSuppression",
    "SentRecipient",
    "TLSFailureDay",
    "TLSFailureDetail",
    "TLSPolicyDay",
    "TLSReport",
    "TLSReportFailure",
    "TLSReportPolicy",
    "TLSReportPost",
    "TLSResult",
    "WebSession",
]
