"""The account web UI: an account's mailboxes, the messages of one (paged, newest first), one
message, and moving or (un)marking selected messages as junk (SPEC R3.3: the same store functions
IMAP, the API and the CLI call).

Every page is the logged-in account's own: reads go through the "web reads" of
app/store/mailboxes.py, which name the account, so another account's message is a 404 like a
missing one. Every change is a POST carrying the session's CSRF token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.config import Config
from app.db import session_scope
from app.store import mailboxes
from app.store.content import stored_content
from app.web.auth import LoggedIn, account_page, check_form_token, safe_next
from app.web.mailview import ShownMessage, shown_message
from app.web.security import Refused, posted_fields

PAGE_SIZE = 50
# The selection form: a checkbox per message of a page, and a few fields more.
MAX_ACTION_FIELDS = PAGE_SIZE + 5
ACTIONS = ("move", "junk", "notjunk")
# Up to 18 digits a row id always fits the database's 64-bit integer; a longer one names no message.
MAX_ID_DIGITS = 18
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class MessagePage:
    mailbox: str
    messages: list[dict[str, Any]]
    older: str | None  # the `before` key of the next (older) page, if there is one
    names: list[str]  # the account's mailboxes, for the move form


def mailbox_url(name: str) -> str:
    return "/mailbox/" + quote(name, safe="")


def page_key(received: datetime, row_id: int) -> str:
    """A message's (received, id) as a URL parameter: whole microseconds since the epoch, and the id."""
    return f"{(received - _EPOCH) // _MICROSECOND}-{row_id}"


def parse_page_key(key: str) -> tuple[datetime, int] | None:
    micros, _, row_id = key.partition("-")
    number = parse_row_id(row_id)
    if not (micros.isascii() and micros.isdigit()) or len(micros) > 17 or number is None:  # 17: year 3000
        return None
    return _EPOCH + int(micros) * _MICROSECOND, number


def parse_row_id(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS else None


def _login(request: Request) -> LoggedIn:
    login: LoggedIn = request.state.login  # account_page found it
    return login


def _render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status_code)


@account_page
async def mailboxes_page(request: Request) -> Response:
    config: Config = request.app.state.config
    account_id = _login(request).account_id
    summaries = await run_in_threadpool(_summaries, config.resolved_database_url, account_id)
    return _render(request, "mailboxes.html", {"mailboxes": summaries, "mailbox_url": mailbox_url})


def _summaries(database_url: str, account_id: int) -> list[dict[str, Any]]:
    with session_scope(database_url) as session:
        return mailboxes.mailbox_summaries(session, account_id)


@account_page
async def mailbox_page(request: Request) -> Response:
    config: Config = request.app.state.config
    login = _login(request)
    name = request.path_params["name"]
    before = request.query_params.get("before")
    key = parse_page_key(before) if before else None
    if before and key is None:
        raise Refused(400, "That page link is not valid.")
    page = await run_in_threadpool(_message_page, config.resolved_database_url, login.account_id, name, key)
    if page is None:
        raise Refused(404, "You have no mailbox of that name.")
    account = config.accounts[login.account]
    context = {
        "page": page,
        "is_rejects": name == account.rejects_mailbox,
        "rejects_mailbox": account.rejects_mailbox,
        "default_target": account.inbox,
        "mailbox_url": mailbox_url,
        "this_url": mailbox_url(name) + (f"?before={before}" if before else ""),
    }
    return _render(request, "mailbox.html", context)


def _message_page(
    database_url: str, account_id: int, name: str, before: tuple[datetime, int] | None
) -> MessagePage | None:
    with session_scope(database_url) as session:
        rows = mailboxes.account_messages(session, account_id, name, PAGE_SIZE + 1, before)
        if rows is None:
            return None
        names = mailboxes.mailbox_names(session, account_id)
    shown, more = rows[:PAGE_SIZE], len(rows) > PAGE_SIZE
    older = page_key(shown[-1]["received"], shown[-1]["id"]) if more else None
    return MessagePage(name, shown, older, names)


@account_page
async def message_page(request: Request) -> Response:
    config: Config = request.app.state.config
    login = _login(request)
    row_id = parse_row_id(request.path_params["id"])
    found = None if row_id is None else await run_in_threadpool(_message, config, login.account_id, row_id)
    if found is None:
        raise Refused(404, "There is no such message.")
    message, placement, names, shown = found
    headers = shown.headers if shown else []
    context = {
        "message": message,
        "placement": placement,
        "names": names,
        "shown": shown,
        "from_header": next((v for n, v in headers if n.lower() == "from"), message["msg_from"] or "—"),
        "default_target": config.accounts[login.account].inbox,
        "mailbox_url": mailbox_url,
        "this_url": request.url.path,
    }
    return _render(request, "message.html", context)


def _message(
    config: Config, account_id: int, row_id: int
) -> tuple[dict[str, Any], dict[str, str | None], list[str], ShownMessage | None] | None:
    with session_scope(config.resolved_database_url) as session:
        message = mailboxes.account_message(session, account_id, row_id)
        if message is None:
            return None
        placement = mailboxes.message_placement(session, row_id)
        names = mailboxes.mailbox_names(session, account_id)
    try:
        shown = shown_message(stored_content(config), message["path"])
    except OSError:
        shown = None  # the page says the message cannot be read; the row is still shown
    return message, placement, names, shown


@account_page
async def message_action(request: Request) -> Response:
    """Move the selected messages, or mark them junk / not junk; back to the page they were chosen on."""
    config: Config = request.app.state.config
    login = _login(request)
    fields = await posted_fields(request, max_fields=MAX_ACTION_FIELDS)
    form = dict(fields)
    check_form_token(request, form)
    action, given = form.get("action", ""), [value for name, value in fields if name == "id"]
    ids = [row_id for row_id in map(parse_row_id, given) if row_id is not None]
    if action not in ACTIONS:
        raise Refused(400, "Choose what to do with the messages.")
    if not given:
        raise Refused(400, "Select at least one message.")
    try:
        if len(ids) != len(given):
            raise mailboxes.MailboxError("not a message id")
        rules = mailboxes.MoveRules.of(config, login.account)
        url = config.resolved_database_url
        await run_in_threadpool(_apply, url, login.account_id, rules, action, ids, form)
    except mailboxes.MailboxError:
        raise Refused(404, "No such mailbox, or a message that is not yours.") from None
    return RedirectResponse(safe_next(form.get("back")), status_code=303)


def _apply(
    database_url: str,
    account_id: int,
    rules: mailboxes.MoveRules,
    action: str,
    ids: list[int],
    form: dict[str, str],
) -> None:
    """The form's action; MailboxError (nothing changed: the session rolls back) for a message that
    is not the account's or an unknown mailbox."""
    with session_scope(database_url) as session:
        if action == "move":
            mailboxes.move_messages(session, account_id, ids, form.get("target", ""), rules=rules)
        else:
            junk = action == "junk"
            mailboxes.set_flags(session, account_id, ids, junk=junk, notjunk=not junk)
