"""Reports waiting for an `https:` rua (`TLSReportPost` rows), POSTed when due (SPEC R5.4).

A frequent beat task calls `post_due_reports`. Each due row is first leased to the caller by moving its
due time forward with an UPDATE that re-checks it (two workers never POST the same report; a worker that
dies leaves a lease that expires). Success deletes the row; a failure (no connection, TLS, non-2xx) is
tried once more HTTPS_RETRY_DELAY later, the same day, then the report is dropped with an error line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app import metrics
from app.config import Config
from app.db import affected_rows, session_scope
from app.dns import Resolver, resolver_from_config
from app.logs import cid_scope, fields
from app.models import TLSReportPost
from app.tlsreports.https import PostError, post_report

log = logging.getLogger("app.tlsreports")

HTTPS_RETRY_DELAY = timedelta(hours=2)
HTTPS_ATTEMPTS = 2  # the first POST and one retry later that day
HTTPS_LEASE = timedelta(minutes=10)


@dataclass
class PostSummary:
    posted: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def add_post(
    session: Session, *, report_id: str, policy_domain: str, url: str, payload: bytes, due: datetime
) -> None:
    """Keep a report for an `https:` rua, POSTed from `due` on (added in the caller's transaction)."""
    post = TLSReportPost(report_id=report_id, policy_domain=policy_domain, url=url, payload=payload, due=due)
    session.add(post)


def _take_due(db_url: str, now: datetime, limit: int) -> list[TLSReportPost]:
    taken = []
    with session_scope(db_url) as session:
        query = select(TLSReportPost).where(TLSReportPost.due <= now).order_by(TLSReportPost.due).limit(limit)
        for post in list(session.scalars(query)):
            lease = (
                update(TLSReportPost)
                .where(TLSReportPost.id == post.id, TLSReportPost.due == post.due)
                .values(due=now + HTTPS_LEASE)
            )
            if affected_rows(session.execute(lease)):
                taken.append(post)
    return taken


async def post_due_reports(
    config: Config, now: datetime, *, resolver: Resolver | None = None, limit: int = 100
) -> PostSummary:
    """POST the reports whose time has come (at most `limit`; the next call takes the rest)."""
    resolver = resolver or resolver_from_config(config.dns)
    summary = PostSummary()
    db_url = config.resolved_database_url
    for post in _take_due(db_url, now, limit):
        with cid_scope():
            try:
                status = await post_report(
                    post.url,
                    post.payload,
                    resolver,
                    ca_bundle=config.delivery.ca_bundle,
                    allowed_networks=config.delivery.https_allowed_networks,
                )
            except PostError as e:
                _failed(db_url, post, str(e), now, summary)
                continue
            with session_scope(db_url) as session:
                session.execute(delete(TLSReportPost).where(TLSReportPost.id == post.id))
            summary.posted.append(post.report_id)
            metrics.reports_sent("tlsrpt", "https")
            posted = fields(report_id=post.report_id, domain=post.policy_domain, url=post.url, status=status)
            log.info("tls reports: report posted", extra=posted)
    return summary


def _failed(db_url: str, post: TLSReportPost, error: str, now: datetime, summary: PostSummary) -> None:
    attempts = post.attempts + 1
    with session_scope(db_url) as session:
        if attempts >= HTTPS_ATTEMPTS:
            session.execute(delete(TLSReportPost).where(TLSReportPost.id == post.id))
            summary.dropped.append(post.report_id)
            log.error(
                "tls reports: report %s for %s not delivered to %s after %d attempts, dropped: %s",
                post.report_id,
                post.policy_domain,
                post.url,
                attempts,
                error,
            )
            return
        retry = now + HTTPS_RETRY_DELAY
        values = {"attempts": attempts, "last_error": error, "due": retry}
        session.execute(update(TLSReportPost).where(TLSReportPost.id == post.id).values(values))
    summary.retrying.append(post.report_id)
    log.warning(
        "tls reports: report %s for %s: %s; trying once more at %s",
        post.report_id,
        post.policy_domain,
        error,
        f"{retry:%Y-%m-%d %H:%M} UTC",
    )
