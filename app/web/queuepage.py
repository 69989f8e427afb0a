"""The outgoing queue page (postmaster only): the queued messages a page at a time, next attempt
first, each with "retry now" and "drop" (after a confirmation page).

The same owner functions as `postwarden queue list|retry|drop` (app/queue/outgoing.py), with the
same semantics: retry makes a row due now (the next sweep sends it), drop deletes the row without a
DSN and its file once no other recipient's row needs it; a row a worker holds is left alone. Last
errors are remote servers' replies: cut short and shown with control characters escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.config import Config
from app.db import session_scope
from app.logs import escape_control
from app.queue import outgoing
from app.web.auth import admin_page, check_form_token
from app.web.mail import parse_row_id
from app.web.security import Refused, posted_form

PAGE_SIZE = 100
MAX_PAGE_DIGITS = 6
SHOWN_ERROR = 300  # characters of a last error on the list; the confirmation page shows more
CONFIRM_ERROR = 2000
NOT_QUEUED = "it is no longer queued, or a worker is delivering it right now."
# The result of an action, named in the redirect's query (no text of the request is echoed).
DONE = {
    "retried": "Message {id} is due now: the next queue sweep (within a minute) sends it.",
    "dropped": "Message {id} was dropped from the queue; no DSN was sent.",
    "not-retried": "Message {id} was not retried: " + NOT_QUEUED,
    "not-dropped": "Message {id} was not dropped: " + NOT_QUEUED,
}


@dataclass(frozen=True)
class QueueRow:
    id: int
    sender: str
    recipient: str
    domain: str
    kind: str
    attempts: int
    max_attempts: int
    created: datetime
    next_attempt: datetime
    due: bool
    held: bool  # a worker is delivering it: no actions
    last_error: str


@dataclass(frozen=True)
class QueuePage:
    rows: list[QueueRow]
    size: int
    due: int
    number: int  # 1-based
    more: bool


def queue_row(listed: outgoing.Listed, error_length: int) -> QueueRow:
    row = listed.row
    kind = "DMARC report" if row.is_dmarc_report else "TLS report" if row.is_tls_report else "submission"
    return QueueRow(
        id=row.id,
        sender=escape_control(row.sender) or "<>",
        recipient=escape_control(row.recipient),
        domain=escape_control(row.recipient_domain),
        kind=kind,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        created=row.created,
        next_attempt=row.next_attempt,
        due=listed.due,
        held=listed.held,
        last_error=escape_control((row.last_error or "")[:error_length]),
    )


def _page(database_url: str, number: int) -> QueuePage:
    with session_scope(database_url) as session:
        size, _ = outgoing.size_and_oldest(session)
        due = outgoing.count_due(session)
        listed = outgoing.list_rows(session, limit=PAGE_SIZE + 1, offset=(number - 1) * PAGE_SIZE)
    rows = [queue_row(one, SHOWN_ERROR) for one in listed[:PAGE_SIZE]]
    return QueuePage(rows, size, due, number, len(listed) > PAGE_SIZE)


def _message_id(request: Request) -> int:
    row_id = parse_row_id(request.path_params["id"])
    if row_id is None:
        raise Refused(404, "There is no such queued message.")
    return row_id


@admin_page
async def queue_page(request: Request) -> Response:
    config: Config = request.app.state.config
    given = request.query_params.get("page", "1")
    if not (given.isascii() and given.isdigit() and 0 < len(given) <= MAX_PAGE_DIGITS and int(given) > 0):
        raise Refused(400, "That page link is not valid.")
    page = await run_in_threadpool(_page, config.resolved_database_url, int(given))
    done, done_id = request.query_params.get("done", ""), parse_row_id(request.query_params.get("id", ""))
    flash = DONE[done].format(id=done_id) if done in DONE and done_id is not None else None
    context = {"page": page, "flash": flash, "first": (page.number - 1) * PAGE_SIZE + 1}
    return request.app.state.templates.TemplateResponse(request, "queue.html", context)


@admin_page
async def retry_action(request: Request) -> Response:
    config: Config = request.app.state.config
    check_form_token(request, await posted_form(request))
    row_id = _message_id(request)
    retried = await run_in_threadpool(_retry, config.resolved_database_url, row_id)
    return RedirectResponse(
        f"/queue?done={'retried' if retried else 'not-retried'}&id={row_id}", status_code=303
    )


def _retry(database_url: str, row_id: int) -> bool:
    with session_scope(database_url) as session:
        return bool(outgoing.retry_now(session, (row_id,)))  # never empty ids: that retries all


@admin_page
async def drop_page(request: Request) -> Response:
    """GET: the message and a button to drop it (the confirmation); POST: drop it."""
    config: Config = request.app.state.config
    row_id = _message_id(request)
    if request.method == "POST":
        check_form_token(request, await posted_form(request))
        dropped = await run_in_threadpool(outgoing.drop_messages, config, (row_id,))
        return RedirectResponse(
            f"/queue?done={'dropped' if dropped else 'not-dropped'}&id={row_id}", status_code=303
        )
    row = await run_in_threadpool(_row, config.resolved_database_url, row_id)
    if row is None:
        raise Refused(404, "There is no such queued message: it was delivered, failed or dropped.")
    return request.app.state.templates.TemplateResponse(request, "queue_drop.html", {"row": row})


def _row(database_url: str, row_id: int) -> QueueRow | None:
    with session_scope(database_url) as session:
        listed = outgoing.list_rows(session, (row_id,))
    return queue_row(listed[0], CONFIRM_ERROR) if listed else None
