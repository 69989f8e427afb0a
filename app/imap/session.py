"""One IMAP connection: the states of RFC 9051 section 3 (not authenticated, authenticated, selected,
logout) and the commands served so far.

Every command is read whole and bounded (app/imap/reader.py), parsed (app/imap/parser.py), and
answered; a malformed one gets a tagged BAD naming what is wrong in our words, never a traceback. A
client idle beyond the timeout of its state is logged out; one that keeps sending bad commands is
disconnected. Passwords are only taken over TLS and checked like submission's (app/throttle.py).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
from base64 import b64decode
from bisect import bisect_left
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from app.accounts import account_for_login
from app.imap import mailboxes, responses
from app.imap.binary import binary_item
from app.imap.bodystructure import body_structure
from app.imap.changes import flags_line, update_of
from app.imap.condstore import enables_condstore, modseq_item, names_modseq, search_modseq
from app.imap.envelope import envelope
from app.imap.errors import CommandFailed
from app.imap.mailstore import AccountStore
from app.imap.parser import (
    Command,
    FetchItem,
    ParseError,
    Section,
    SequenceSet,
    parse_command,
    tag_of,
)
from app.imap.reader import Closed, ReadLimits, Rejected, read_command
from app.imap.search import columns_of, esearch, matches, prepared, saved_result
from app.imap.sections import partial, section_octets
from app.imap.textsearch import MessageText
from app.store.files import MailboxCopy, StoreError
from app.store.mailboxes import MailboxError, MessageRow
from app.throttle import attempt_login

if TYPE_CHECKING:
    from app.imap.server import IMAPListener, IMAPServer

log = logging.getLogger("app.imap")

LOGGED_LOGIN_LENGTH = 100
# Rows read per query while answering a FETCH or STORE over many messages.
FETCH_BATCH = 500
# Response octets gathered before a write (a body larger than this goes out alone).
SEND_CHUNK = 64 * 1024
# The same for the lines of a FETCH of flags alone (tens of thousands of short lines).
FLAGS_CHUNK = 256 * 1024
# Message octets read together with their rows in one worker-thread call; larger ones are read alone.
CONTENT_BUDGET = 1024 * 1024
NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = (
    "not authenticated",
    "authenticated",
    "selected",
    "logout",
)
_ANY_STATE = (NOT_AUTHENTICATED, AUTHENTICATED, SELECTED)
_AUTHENTICATED_STATES = (AUTHENTICATED, SELECTED)


@dataclass
class Selection:
    mailbox_id: int
    uidvalidity: int
    uids: list[int]  # the session's view: message sequence number n is uids[n - 1]
    read_only: bool
    modseq: int  # the mailbox's modification sequence the view is up to date with (SPEC R8.3)
    # UID -> modseq of flags this session sent (its STORE) since the view was last brought up to date.
    shown: dict[int, int] = field(default_factory=dict)
    saved: list[int] = field(default_factory=list)  # UIDs kept by SEARCH RETURN (SAVE): `$` (RFC 5182)
    # UID -> (path, size) of the view's messages: what never changes while a message keeps its UID,
    # so a FETCH of the message's octets needs no query (kept in step by _report_changes).
    files: dict[int, tuple[str, int]] = field(default_factory=dict)

    def numbers(self, uids: list[int]) -> dict[int, int]:
        """The message numbers of these UIDs (by bisection: a dict of the whole view would cost
        milliseconds per command on a mailbox of 50,000)."""
        return {uid: bisect_left(self.uids, uid) + 1 for uid in uids}


class IMAPSession:
    def __init__(
        self,
        server: IMAPServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        listener: IMAPListener,
        peer_ip: str,
    ) -> None:
        self.config, self.limits, self.message_store = server.config, server.limits, server.store
        self.wakeups = server.wakeups
        self.reader, self.writer = reader, writer
        self.tls_context, self.tls, self.peer_ip = listener.tls, listener.implicit_tls, peer_ip
        self.state = NOT_AUTHENTICATED
        self.store: AccountStore | None = None
        self.selection: Selection | None = None
        self.errors = 0
        self.utf8 = False  # ENABLE UTF8=ACCEPT: mailbox names in UTF-8, not modified UTF-7 (RFC 6855)
        self.rev2 = False  # ENABLE IMAP4rev2: ESEARCH answers every SEARCH, no RECENT (RFC 9051)
        self.condstore = False  # RFC 7162: FETCH responses of flag changes carry MODSEQ once on

    # The command loop.

    async def run(self) -> None:
        await self.send(b"* OK [CAPABILITY " + self.capabilities() + b"] Postwarden IMAP ready\r\n")
        while self.state != LOGOUT:
            try:
                data = await read_command(self.reader, self.send, self._read_limits())
            except Rejected as e:
                await self._bad(e.tag, e.text)
                if e.close:
                    await self.send(b"* BYE Closing the connection\r\n")
                    return
                continue
            except Closed:
                await self._autologout()
                return
            await self._handle(data)
            if self.errors >= self.limits.max_errors:
                await self.send(b"* BYE Too many bad commands\r\n")
                return

    def _read_limits(self) -> ReadLimits:
        idle = self.limits.idle_timeout if self.state in _AUTHENTICATED_STATES else self.limits.login_timeout
        return ReadLimits(self.limits.max_line, self.limits.max_literal, idle, self.limits.max_append)

    async def _autologout(self) -> None:
        if not self.reader.at_eof():
            await self.send(b"* BYE Autologout: idle for too long\r\n")

    async def _handle(self, data: bytes) -> None:
        try:
            command = parse_command(data)
        except ParseError as e:
            await self._bad(tag_of(data), str(e))
            return
        handler, states = _COMMANDS[command.name]
        if self.state not in states:
            await self._bad(command.tag, f"{command.name} is not allowed in the {self.state} state")
            return
        self.condstore |= enables_condstore(command)
        try:
            mailboxes.decode_names(command, self.utf8)
            await handler(self, command)
        except CommandFailed as e:
            if e.status == "BAD":
                self.errors += 1
            await self.send(f"{command.tag} {e.status} {e.text}\r\n".encode())
        except SQLAlchemyError as e:
            log.error(
                "imap %s ip=%s: database problem: %s", command.name, self.peer_ip, str(e).partition("\n")[0]
            )
            await self.send(f"{command.tag} NO [UNAVAILABLE] Temporary failure; try again later\r\n".encode())
        except Closed:
            raise
        except Exception:  # a fault of ours (e.g. a message file gone): logged, never shown to the client
            log.exception("imap %s ip=%s failed", command.name, self.peer_ip)
            await self.send(f"{command.tag} NO [SERVERBUG] The command failed; it was logged\r\n".encode())

    async def _bad(self, tag: str | None, text: str) -> None:
        self.errors += 1
        await self.send(f"{tag or '*'} BAD {text}\r\n".encode())

    async def send(self, data: bytes) -> None:
        """Write and wait until the client takes it, for at most the idle timeout (a client that
        stops reading is not waited for forever)."""
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.limits.idle_timeout):  # not wait_for: that makes a task per write
                await self.writer.drain()
        except (TimeoutError, ConnectionError):
            self.state = LOGOUT
            raise Closed() from None

    async def ok(self, command: Command, text: str) -> None:
        await self.send(f"{command.tag} OK {text}\r\n".encode())

    # Any state.

    def capabilities(self) -> bytes:
        names = [
            "IMAP4rev1",
            "IMAP4rev2",
            "LITERAL+",
            "ID",
            "UNSELECT",
            "SPECIAL-USE",
            "MOVE",
            "IDLE",
            "NAMESPACE",
            "ENABLE",
            "UIDPLUS",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "UTF8=ACCEPT",
            "ESEARCH",
            "BINARY",
            "SEARCHRES",
            "CONDSTORE",
        ]
        if not self.tls:
            names += ["STARTTLS", "LOGINDISABLED"]
        elif self.state == NOT_AUTHENTICATED:
            names += ["AUTH=PLAIN", "SASL-IR"]
        return " ".join(names).encode()

    async def capability(self, command: Command) -> None:
        await self.send(b"* CAPABILITY " + self.capabilities() + b"\r\n")
        await self.ok(command, "CAPABILITY completed")

    async def noop(self, command: Command) -> None:
        if self.selection is not None:
            await self._report_changes()
        await self.ok(command, f"{command.name} completed")

    async def logout(self, command: Command) -> None:
        await self.send(b"* BYE Logging out\r\n")
        await self.ok(command, "LOGOUT completed")
        self.state = LOGOUT

    async def id(self, command: Command) -> None:
        await self.send(b'* ID ("name" "Postwarden")\r\n')
        await self.ok(command, "ID completed")

    # Not authenticated: STARTTLS, LOGIN, AUTHENTICATE PLAIN.

    async def starttls(self, command: Command) -> None:
        if self.tls:
            raise CommandFailed("BAD", "TLS is already active")
        # Octets the client sent after STARTTLS were sent in the clear: they must not be taken as
        # commands of the protected session (CVE-2011-0411 and kin). Reading stops before our OK, so
        # everything the client sends after it is left to the TLS handshake (start_tls reads on).
        transport = self.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)  # a socket transport reads and writes
        transport.pause_reading()
        if self.reader._buffer:  # type: ignore[attr-defined]
            log.info("imap STARTTLS ip=%s: data pipelined after STARTTLS; closing", self.peer_ip)
            self.state = LOGOUT
            raise CommandFailed("BAD", "Commands were sent after STARTTLS before TLS began; closing")
        await self.ok(command, "Begin TLS negotiation now")
        try:
            await asyncio.wait_for(self.writer.start_tls(self.tls_context), self.limits.login_timeout)
        except (TimeoutError, OSError) as e:
            log.info("imap STARTTLS ip=%s: handshake failed: %s", self.peer_ip, e)
            self.state = LOGOUT
            return
        self.tls = True

    async def login(self, command: Command) -> None:
        self._require_tls()
        await self._log_in(command, command.args["user"], command.args["password"])  # type: ignore[arg-type]

    async def authenticate(self, command: Command) -> None:
        self._require_tls()
        if command.args["mechanism"] != "PLAIN":
            raise CommandFailed("NO", "[CANNOT] Only AUTHENTICATE PLAIN is offered")
        initial = command.args["initial"]
        answer = await self._sasl_answer() if initial is None else str(initial)
        try:
            parts = b64decode(answer, validate=True).split(b"\0") if answer != "=" else []
        except binascii.Error:
            raise CommandFailed("BAD", "the PLAIN response is not base64") from None
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            raise CommandFailed(
                "NO", "[AUTHENTICATIONFAILED] PLAIN needs user name and password (no authzid)"
            )
        await self._log_in(command, parts[1], parts[2])

    def _require_tls(self) -> None:
        if not self.tls:
            raise CommandFailed(
                "NO", "[PRIVACYREQUIRED] Use STARTTLS first: passwords are only taken over TLS"
            )

    async def _sasl_answer(self) -> str:
        await self.send(b"+ \r\n")
        try:
            line = await read_command(self.reader, self.send, self._read_limits())
        except Rejected as e:
            raise CommandFailed("BAD", e.text) from None
        if line == b"*":
            raise CommandFailed("BAD", "AUTHENTICATE cancelled")
        if not re.fullmatch(rb"[A-Za-z0-9+/]*={0,2}", line):
            raise CommandFailed("BAD", "the PLAIN response is not base64")
        return line.decode("ascii")

    async def _log_in(self, command: Command, login_raw: bytes, password_raw: bytes) -> None:
        try:
            login, password = login_raw.decode("utf-8"), password_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandFailed("NO", "[AUTHENTICATIONFAILED] Invalid credentials") from None
        account = account_for_login(self.config, login)
        result = await asyncio.to_thread(
            attempt_login,
            self.config.resolved_database_url,
            self.config.login_throttle,
            account,
            login,
            password,
            self.peer_ip,
        )
        shown = login[:LOGGED_LOGIN_LENGTH]
        if result.retry_after is not None:
            log.warning("imap login refused: too many failed logins ip=%s login=%r", self.peer_ip, shown)
            raise CommandFailed("NO", "[UNAVAILABLE] Too many failed logins; try again later")
        if result.account is None:
            log.info("imap login failed ip=%s login=%r failures=%d", self.peer_ip, shown, result.failures)
            await asyncio.sleep(result.delay)  # a growing delay slows a guesser that waits for replies
            raise CommandFailed("NO", "[AUTHENTICATIONFAILED] Invalid credentials")
        self.store = await AccountStore.open(self.config, result.account)
        self.state = AUTHENTICATED
        log.info("imap login ok ip=%s account=%s", self.peer_ip, result.account)
        await self.ok(command, "[CAPABILITY " + self.capabilities().decode() + "] Logged in")

    # Authenticated: LIST, STATUS, SELECT, EXAMINE.

    def _account(self) -> AccountStore:
        assert self.store is not None  # the command table allows these commands only when logged in
        return self.store

    async def namespace(self, command: Command) -> None:
        await self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        await self.ok(command, "NAMESPACE completed")

    async def enable(self, command: Command) -> None:
        """ENABLE (RFC 5161) of UTF8=ACCEPT (names in UTF-8 from now on, RFC 6855) IMAP4rev2 (its
        responses, RFC 9051) and CONDSTORE (RFC 7162); nothing else."""
        capabilities: list[str] = command.args["capabilities"]  # type: ignore[assignment]
        enabled = [_ENABLES[name] for name in capabilities if name in _ENABLES]
        self.rev2 = self.rev2 or "IMAP4rev2" in enabled
        self.utf8 = self.utf8 or self.rev2 or "UTF8=ACCEPT" in enabled  # IMAP4rev2 names are UTF-8
        self.condstore = self.condstore or "CONDSTORE" in enabled
        await self.send(" ".join(["* ENABLED", *dict.fromkeys(enabled)]).encode() + b"\r\n")
        await self.ok(command, "ENABLE completed")

    async def append(self, command: Command) -> None:
        """Store the message in the mailbox as SMTP stores mail (file, rows, a new UID), with the
        flags given. It is only stored: an APPEND to Sent records no sent recipients and sends nothing."""
        account, name = self._account(), str(command.args["mailbox"])
        flags = _flag_changes("add", command.args["flags"])  # type: ignore[arg-type]
        target = await account.uid_state(name)
        if target is None:
            raise CommandFailed("NO", "[TRYCREATE] No such mailbox")
        if b"\x00" in command.args["message"]:  # type: ignore[operator]
            raise CommandFailed("NO", "[UNKNOWN-CTE] Messages holding NUL octets are not stored")
        copy = MailboxCopy(account.account, account.store_name(name), columns=flags)
        try:
            stored = await self.message_store.store_copies(command.args["message"], [copy])  # type: ignore[arg-type]
        except StoreError:
            raise CommandFailed(
                "NO", "[UNAVAILABLE] The message could not be stored; try again later"
            ) from None
        uid = await account.uid_of_file(stored[0]) if stored else None
        if self.selection is not None:
            await self._report_changes()
        code = "" if uid is None else f"[APPENDUID {target.uidvalidity} {uid}] "  # UIDPLUS (RFC 4315)
        await self.ok(command, f"{code}APPEND completed")

    async def select(self, command: Command) -> None:
        if self.selection is not None and self.rev2:  # RFC 9051 7.1: the mailbox left is closed
            await self.send(b"* OK [CLOSED] Previous mailbox closed\r\n")
        self.selection, self.state = None, AUTHENTICATED
        name = str(command.args["mailbox"])
        state = await self._account().uid_state(name)
        if state is None:
            raise CommandFailed("NO", "[NONEXISTENT] No such mailbox")
        files = await self._account().files(state.mailbox_id)
        uids = [uid for uid, _, _ in files]
        read_only = command.name == "EXAMINE"
        self.selection = Selection(state.mailbox_id, state.uidvalidity, uids, read_only, state.highestmodseq)
        self.selection.files = {uid: (path, size) for uid, path, size in files}
        self.state = SELECTED
        permanent = "()" if read_only else responses.ALL_FLAGS
        recent = "" if self.rev2 else "* 0 RECENT\r\n"  # IMAP4rev2 has no RECENT
        # HIGHESTMODSEQ once CONDSTORE is on (SELECT (CONDSTORE) turns it on), as Dovecot does.
        highest = f"* OK [HIGHESTMODSEQ {state.highestmodseq}] Highest modification sequence\r\n"
        await self.send(
            f"* FLAGS {responses.ALL_FLAGS}\r\n* {len(uids)} EXISTS\r\n{recent}"
            f"* OK [UIDVALIDITY {state.uidvalidity}] UIDs valid\r\n"
            f"* OK [UIDNEXT {state.uidnext}] Predicted next UID\r\n"
            f"{highest if self.condstore else ''}"
            f"* OK [PERMANENTFLAGS {permanent}] Flags the mailbox keeps\r\n".encode()
        )
        mode = "READ-ONLY" if read_only else "READ-WRITE"
        await self.ok(command, f"[{mode}] {command.name} completed")

    # Selected: UNSELECT, FETCH, STORE (and their UID forms).

    def _selected(self) -> Selection:
        assert self.selection is not None  # the command table allows these commands only when selected
        return self.selection

    async def unselect(self, command: Command) -> None:
        self.selection, self.state = None, AUTHENTICATED
        await self.ok(command, "UNSELECT completed")

    async def close(self, command: Command) -> None:
        """Expunge without telling (unless read-only), then leave the mailbox (RFC 9051 6.4.1)."""
        selection = self._selected()
        if not selection.read_only:
            await self._account().expunge(selection.mailbox_id)
        self.selection, self.state = None, AUTHENTICATED
        await self.ok(command, "CLOSE completed")

    async def expunge(self, command: Command) -> None:
        selection = self._selected()
        if selection.read_only:
            raise CommandFailed("NO", "[READ-ONLY] The mailbox is selected read-only (EXAMINE)")
        only = None if command.name == "EXPUNGE" else self._targets(command)  # UID EXPUNGE: these only
        await self._expunged(set(await self._account().expunge(selection.mailbox_id, only)))
        await self.ok(command, f"{command.name} completed")

    async def idle(self, command: Command) -> None:
        """IDLE (RFC 2177): until the client's DONE, report changes to the selected mailbox (new,
        departed, flags), when it is notified of one or every `idle_poll` seconds; a client idle for
        longer than the idle timeout is logged out."""
        await self.send(b"+ idling\r\n")
        deadline = asyncio.get_running_loop().time() + self.limits.idle_timeout
        with self.wakeups.watching(None if self.selection is None else self.selection.mailbox_id) as woken:
            line = await self._idle_until_done(deadline, woken)
        if line.strip().upper() != b"DONE":
            raise CommandFailed("BAD", "IDLE ends with DONE")
        await self.ok(command, "IDLE terminated")

    async def _idle_until_done(self, deadline: float, woken: asyncio.Event) -> bytes:
        """The client's next line; until it comes, changes are reported when the mailbox's wake-up
        is set (app/imap/wakeup.py) or every `idle_poll` seconds, whichever is first."""
        reading = asyncio.ensure_future(self.reader.readuntil(b"\n"))
        try:
            while True:
                waking = asyncio.ensure_future(woken.wait())
                poll = self.limits.idle_poll
                await asyncio.wait({reading, waking}, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
                woken.clear()  # before the read: a change committed during it wakes the next round
                if reading.done():
                    return reading.result()
                if asyncio.get_running_loop().time() > deadline:
                    await self.send(b"* BYE Autologout: idle for too long\r\n")
                    raise Closed()
                if self.selection is not None:
                    await self._report_changes()
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ConnectionError):
            raise Closed() from None
        finally:
            reading.cancel()  # readuntil leaves what came in the buffer for the next read

    async def _report_changes(self) -> None:
        """Tell the client what others changed since its view was taken (app/imap/changes.py):
        messages that left the mailbox (EXPUNGE, highest number first, so each number is right when
        sent), new flags (FETCH) and new messages (EXISTS)."""
        selection = self._selected()
        found = await self._account().changes(selection.mailbox_id, selection.modseq)
        if found is None:
            return
        update = update_of(selection.uids, selection.shown, found)
        selection.files.update((row["uid"], (row["path"], row["size"])) for row in found.changed)
        await self._expunged(update.expunged)
        numbers = {uid: n for n, uid in enumerate(selection.uids, 1)}
        lines = b"".join(flags_line(numbers[row["uid"]], row, self.condstore) for row in update.flagged)
        if update.added:
            selection.uids += update.added
            lines += b"* %d EXISTS\r\n" % len(selection.uids)
        selection.modseq, selection.shown = found.highestmodseq, {}
        if lines:
            await self.send(lines)

    def _targets(self, command: Command) -> list[int]:
        """The UIDs the command's sequence set names, ascending."""
        uids = self._selected().uids
        sequence: SequenceSet = command.args["sequence"]  # type: ignore[assignment]
        if sequence.saved:  # the saved UIDs still in the mailbox, for the UID form and the other alike
            saved = set(self._selected().saved)
            return [uid for uid in uids if uid in saved]
        if command.name.startswith("UID "):
            return sequence.pick(uids)
        if sequence.largest_named() > len(uids):
            raise CommandFailed(
                "BAD", f"no message {sequence.largest_named()} (the mailbox holds {len(uids)})"
            )
        return [uids[n - 1] for n in sequence.pick(range(1, len(uids) + 1))]

    async def fetch(self, command: Command) -> None:
        items: list[FetchItem] = command.args["items"]  # type: ignore[assignment]
        if command.name == "UID FETCH" and all(i.name != "UID" for i in items):
            items = [FetchItem("UID"), *items]
        since = command.args["changedsince"]
        if since is not None and all(i.name != "MODSEQ" for i in items):  # RFC 7162 3.1.4.1
            items = [*items, FetchItem("MODSEQ")]
        targets = self._targets(command)
        numbers = self._selected().numbers(targets)
        out = bytearray()  # the responses' last chunk goes out with the tagged OK: one write, not two
        if targets and all(i.name in _FLAG_ITEMS for i in items):
            await self._fetch_flags(targets, [i.name for i in items], numbers, since, out)  # type: ignore[arg-type]
        else:
            for start in range(0, len(targets), FETCH_BATCH):
                await self._fetch_batch(targets[start : start + FETCH_BATCH], items, numbers, since, out)  # type: ignore[arg-type]
        await self.send(bytes(out) + f"{command.tag} OK {command.name} completed\r\n".encode())

    async def _fetch_flags(
        self,
        uids: list[int],
        names: list[str],
        numbers: dict[int, int],
        changedsince: int | None,
        out: bytearray,
    ) -> None:
        """A FETCH of FLAGS, UID and MODSEQ alone (the flag sync every client does on a whole mailbox):
        a few columns as tuples read in one query, the lines formatted in one pass and sent in large
        chunks, the last left in `out`. These items never set \\Seen."""
        selection = self._selected()
        found = await self._account().flag_tuples(
            selection.mailbox_id, (uids[0], uids[-1]), list(responses.FLAG_COLUMNS.values())
        )
        wanted = set(uids)  # the range may hold UIDs the command did not name
        shown: dict[tuple[bool, ...], bytes] = {}  # each combination of flags formatted once
        for uid, modseq, *flags in found:
            if uid not in wanted or (changedsince is not None and modseq <= changedsince):
                continue
            key = tuple(flags)
            if key not in shown:
                shown[key] = b"FLAGS " + responses.flag_list(key)
            data = [
                shown[key] if n == "FLAGS" else (b"UID %d" % uid if n == "UID" else b"MODSEQ (%d)" % modseq)
                for n in names
            ]
            out += b"* %d FETCH (%b)\r\n" % (numbers[uid], b" ".join(data))
            if len(out) >= FLAGS_CHUNK:
                await self.send(bytes(out))
                out.clear()

    async def _fetch_batch(
        self,
        uids: list[int],
        items: list[FetchItem],
        numbers: dict[int, int],
        changedsince: int | None,
        out: bytearray,
    ) -> None:
        """The FETCH lines of these messages, sent in chunks as they fill; the last left in `out`."""
        selection, account = self._selected(), self._account()
        contents: dict[int, bytes] = {}  # files read with the rows, by UID
        from_view = None if changedsince is not None else await self._from_view(uids, items)
        if from_view is not None:
            rows, contents = from_view
        elif any(i.name not in _FROM_ROW for i in items):
            rows, contents = await account.rows_with_content(selection.mailbox_id, uids, CONTENT_BUDGET)
        else:
            rows = await account.rows(selection.mailbox_id, uids)
        if changedsince is not None:
            rows = [row for row in rows if row["modseq"] > changedsince]
        marks_seen = not selection.read_only and any(_sets_seen(i) for i in items)
        unseen = [row for row in rows if not row["seen"]] if marks_seen else []
        if unseen:
            modseqs = await account.set_flags([row["id"] for row in unseen], {"seen": True})
            for row in unseen:
                row["seen"], row["modseq"] = True, modseqs[row["id"]]
                selection.shown[row["uid"]] = row["modseq"]  # shown here: not reported again
        # A message whose \Seen the fetch set shows its flags, asked for or not (RFC 9051 6.4.5).
        changed = {row["uid"] for row in unseen} if all(i.name != "FLAGS" for i in items) else set()
        for row in rows:
            shown = [*items, _FLAGS] if row["uid"] in changed else items
            needs_content = any(i.name not in _FROM_ROW for i in shown)
            content = b""  # read once per message, if an item needs it
            if needs_content:
                content = contents[row["uid"]] if row["uid"] in contents else await account.content(row)
            out += responses.fetch_line(numbers[row["uid"]], [_fetch_item(row, i, content) for i in shown])
            if len(out) >= SEND_CHUNK:  # lines go in chunks: one write per message costs more than the line
                await self.send(bytes(out))
                out.clear()

    async def _from_view(
        self, uids: list[int], items: list[FetchItem]
    ) -> tuple[list[MessageRow], dict[int, bytes]] | None:
        """The rows (UID and size alone) and files of a FETCH whose items need nothing that changes
        (no flags, no modseq, nothing that sets \\Seen), from the session's view and the files: one
        worker-thread call and no query. None when the rows must be read: an item needs them, a
        message is not in the view, the files pass the read budget, or one is gone."""
        selection = self._selected()
        sets_seen = not selection.read_only and any(_sets_seen(i) for i in items)
        if sets_seen or any(i.name in _FROM_ROW and i.name not in _FROM_VIEW for i in items):
            return None
        known = [selection.files[uid] for uid in uids if uid in selection.files]
        if len(known) < len(uids) or sum(size for _, size in known) > CONTENT_BUDGET:
            return None
        contents = await self._account().read_files([path for path, _ in known])
        if contents is None:
            return None
        rows: list[MessageRow] = [
            {"uid": uid, "size": size} for uid, (_, size) in zip(uids, known, strict=True)
        ]
        return rows, dict(zip(uids, contents, strict=True))

    async def store_flags(self, command: Command) -> None:
        selection = self._selected()
        if selection.read_only:
            raise CommandFailed("NO", "[READ-ONLY] The mailbox is selected read-only (EXAMINE)")
        changes = _flag_changes(command.args["mode"], command.args["flags"])  # type: ignore[arg-type]
        targets = self._targets(command)
        modified: list[int] = []  # UIDs that failed UNCHANGEDSINCE (RFC 7162 3.1.3)
        for start in range(0, len(targets), FETCH_BATCH):
            modified += await self._store_batch(command, targets[start : start + FETCH_BATCH], changes)
        code = ""
        if modified:
            numbers = {uid: n for n, uid in enumerate(selection.uids, 1)}
            shown = modified if command.name == "UID STORE" else [numbers[uid] for uid in modified]
            code = f"[MODIFIED {responses.uid_set(shown)}] "
        await self.ok(command, f"{code}{command.name} completed")

    async def _store_batch(self, command: Command, uids: list[int], changes: dict[str, bool]) -> list[int]:
        """Store the flags on these messages; the UIDs of those left alone as changed since the
        command's UNCHANGEDSINCE."""
        selection, account = self._selected(), self._account()
        rows = await account.rows(selection.mailbox_id, uids)
        since = command.args["unchangedsince"]
        ids = [row["id"] for row in rows]
        try:
            if since is None:
                await account.set_flags(ids, changes)
            else:
                ids = await account.set_flags_unchanged_since(selection.mailbox_id, ids, changes, since)  # type: ignore[arg-type]
        except MailboxError as e:
            raise CommandFailed("NO", f"[CANNOT] {e}") from None
        stored = set(ids)
        numbers = selection.numbers(uids)
        for row in await account.rows(selection.mailbox_id, [r["uid"] for r in rows if r["id"] in stored]):
            selection.shown[row["uid"]] = row["modseq"]  # not reported again as another's change
            if command.args["silent"] and not self.condstore:
                continue
            # Under CONDSTORE, UID and MODSEQ even for .SILENT (RFC 7162 3.1.3), FLAGS unless silent.
            data = [] if command.args["silent"] else [b"FLAGS " + responses.flags_of(row)]
            if command.name == "UID STORE" or self.condstore:
                data.append(b"UID %d" % row["uid"])
            if self.condstore:
                data.append(modseq_item(row))
            await self.send(responses.fetch_line(numbers[row["uid"]], data))
        return [row["uid"] for row in rows if row["id"] not in stored]

    async def search(self, command: Command) -> None:
        """SEARCH over the session's view of the mailbox: message numbers, or UIDs for UID SEARCH;
        with RETURN, an ESEARCH answer (RFC 4731). The keys are tested in a worker thread: those that
        read the message read its file there, at most the message size limit of it."""
        selection = self._selected()
        numbers = {uid: n for n, uid in enumerate(selection.uids, 1)}
        keys = [prepared(key, selection.uids, selection.saved) for key in command.args["keys"]]  # type: ignore[attr-defined]
        columns = sorted({"uid", "path"}.union(*(columns_of(key) for key in keys)))
        rows = await self._account().all_rows(selection.mailbox_id, columns)
        stored, cap = self._account().stored, self.limits.max_append
        every = keys[0] if len(keys) == 1 else ("AND", *keys)  # one call per message, not one per key

        def hits() -> list[MessageRow]:
            found = []
            for row in rows:
                number = numbers.get(row["uid"])  # None: new since the view was taken
                text = MessageText(stored, row["path"], cap)  # the message is read once, if at all
                if number is not None and matches(row, every, number, text):
                    found.append(row)
            return found

        uid, options = command.name == "UID SEARCH", command.args["return"]
        found = await asyncio.to_thread(hits)
        shown = [row["uid"] if uid else numbers[row["uid"]] for row in found]
        if options is None and self.rev2:  # IMAP4rev2 has no SEARCH response: RETURN (ALL)
            options = ["ALL"]
        if options is None:
            modseq = search_modseq(found) if any(names_modseq(key) for key in keys) else b""
            await self.send(b"* SEARCH" + b"".join(b" %d" % n for n in shown) + modseq + b"\r\n")
            await self.ok(command, f"{command.name} completed")
            return
        assert isinstance(options, list)
        if "SAVE" in options:
            selection.saved = saved_result(options, [row["uid"] for row in found])
        if options != ["SAVE"]:  # SAVE alone answers with no ESEARCH (RFC 5182 2.1)
            await self.send(esearch(command.tag, uid, options, shown))
        await self.ok(command, f"{command.name} completed")

    async def copy_or_move(self, command: Command) -> None:
        """COPY and MOVE (RFC 6851) through the store's move_messages (SPEC R3.3). A MOVE reports
        each message that left as EXPUNGE, highest number first."""
        selection, account = self._selected(), self._account()
        moving = command.name.endswith("MOVE")
        if moving and selection.read_only:
            raise CommandFailed("NO", "[READ-ONLY] The mailbox is selected read-only (EXAMINE)")
        target = await account.uid_state(str(command.args["mailbox"]))
        if target is None:
            raise CommandFailed("NO", "[TRYCREATE] No such mailbox")
        targets = self._targets(command)
        sources: list[int] = []
        copies: list[int] = []
        for start in range(0, len(targets), FETCH_BATCH):
            rows = await account.rows(selection.mailbox_id, targets[start : start + FETCH_BATCH])
            try:
                copies += await account.move(
                    [row["id"] for row in rows], str(command.args["mailbox"]), copy=not moving
                )
            except MailboxError as e:
                raise CommandFailed("NO", f"[CANNOT] {e}") from None
            sources += [row["uid"] for row in rows]
        elsewhere = target.mailbox_id != selection.mailbox_id
        code = ""
        if sources and (elsewhere or not moving):  # UIDPLUS (RFC 4315): where each one went
            code = f"[COPYUID {target.uidvalidity} {responses.uid_set(sources)} {responses.uid_set(copies)}] "
        if moving and elsewhere:
            if code:
                await self.send(f"* OK {code}Moved\r\n".encode())
                code = ""
            await self._expunged(set(targets))
        await self.ok(command, f"{code}{command.name} completed")

    async def _expunged(self, uids: set[int]) -> None:
        """Report the messages with these UIDs as gone and drop them from the session's view."""
        selection = self._selected()
        for number in range(len(selection.uids), 0, -1):
            if selection.uids[number - 1] in uids:
                await self.send(b"* %d EXPUNGE\r\n" % number)
        selection.uids = [uid for uid in selection.uids if uid not in uids]
        for uid in uids:
            selection.files.pop(uid, None)


_FLAGS = FetchItem("FLAGS")
# What ENABLE turns on: as parsed (upper case) -> as named in ENABLED.
_ENABLES = {"UTF8=ACCEPT": "UTF8=ACCEPT", "IMAP4REV2": "IMAP4rev2", "CONDSTORE": "CONDSTORE"}
# The items answered from the row alone, without reading the message file.
_FROM_ROW = ("FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ")
# Those of them the session's view knows (Selection.files).
_FROM_VIEW = ("UID", "RFC822.SIZE")
# The items a FETCH of flags alone names (answered from a few columns: _fetch_flags).
_FLAG_ITEMS = ("FLAGS", "UID", "MODSEQ")
_RFC822_SECTIONS = {
    "RFC822": Section(),
    "RFC822.HEADER": Section(text="HEADER"),
    "RFC822.TEXT": Section(text="TEXT"),
}


def _fetch_item(row: MessageRow, item: FetchItem, content: bytes) -> bytes:
    """One data item of a FETCH response; `content` is the message's file (empty if no item needs it)."""
    name = item.name
    if name == "FLAGS":
        return b"FLAGS " + responses.flags_of(row)
    if name == "UID":
        return b"UID %d" % row["uid"]
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + responses.internal_date(row["received"])
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % row["size"]
    if name == "MODSEQ":
        return modseq_item(row)
    if name == "ENVELOPE":
        return b"ENVELOPE " + envelope(content)
    if name in ("BINARY", "BINARY.SIZE"):
        return binary_item(content, item)
    if name in ("BODYSTRUCTURE", "BODY") and item.section is None:
        return name.encode() + b" " + body_structure(content, extended=name == "BODYSTRUCTURE")
    section = item.section or _RFC822_SECTIONS[name]
    data = partial(section_octets(content, section), item.partial)
    return item.response_name().encode() + b" " + responses.literal(data)


def _sets_seen(item: FetchItem) -> bool:
    """Whether fetching the item sets \\Seen (RFC 9051 6.4.5): BODY[...] (not BODY.PEEK), RFC822
    and RFC822.TEXT."""
    return (item.section is not None and not item.peek) or item.name in ("RFC822", "RFC822.TEXT")


def _flag_changes(mode: str, flags: list[str]) -> dict[str, bool]:
    """The set_flags keywords a STORE asks for. Keywords the store does not keep are left out
    (PERMANENTFLAGS does not offer \\*); replacing sets every flag the store keeps."""
    if "\\RECENT" in flags:
        raise CommandFailed("BAD", "\\Recent cannot be stored")
    named = {responses.STORE_KEYWORDS[f] for f in flags if f in responses.STORE_KEYWORDS}
    if mode == "replace":
        return {column: column in named for column in responses.STORE_KEYWORDS.values()}
    return dict.fromkeys(named, mode == "add")


Handler = Callable[[IMAPSession, Command], Coroutine[Any, Any, None]]
_COMMANDS: dict[str, tuple[Handler, tuple[str, ...]]] = {
    "CAPABILITY": (IMAPSession.capability, _ANY_STATE),
    "NOOP": (IMAPSession.noop, _ANY_STATE),
    "CHECK": (IMAPSession.noop, (SELECTED,)),
    "LOGOUT": (IMAPSession.logout, _ANY_STATE),
    "ID": (IMAPSession.id, _ANY_STATE),
    "STARTTLS": (IMAPSession.starttls, (NOT_AUTHENTICATED,)),
    "LOGIN": (IMAPSession.login, (NOT_AUTHENTICATED,)),
    "AUTHENTICATE": (IMAPSession.authenticate, (NOT_AUTHENTICATED,)),
    "LIST": (mailboxes.list_mailboxes, _AUTHENTICATED_STATES),
    "LSUB": (mailboxes.list_mailboxes, _AUTHENTICATED_STATES),
    "SUBSCRIBE": (mailboxes.subscribe, _AUTHENTICATED_STATES),
    "UNSUBSCRIBE": (mailboxes.subscribe, _AUTHENTICATED_STATES),
    "CREATE": (mailboxes.create, _AUTHENTICATED_STATES),
    "DELETE": (mailboxes.delete, _AUTHENTICATED_STATES),
    "RENAME": (mailboxes.rename, _AUTHENTICATED_STATES),
    "NAMESPACE": (IMAPSession.namespace, _AUTHENTICATED_STATES),
    "ENABLE": (IMAPSession.enable, _AUTHENTICATED_STATES),
    "STATUS": (mailboxes.status, _AUTHENTICATED_STATES),
    "APPEND": (IMAPSession.append, _AUTHENTICATED_STATES),
    "SELECT": (IMAPSession.select, _AUTHENTICATED_STATES),
    "EXAMINE": (IMAPSession.select, _AUTHENTICATED_STATES),
    "UNSELECT": (IMAPSession.unselect, (SELECTED,)),
    "CLOSE": (IMAPSession.close, (SELECTED,)),
    "EXPUNGE": (IMAPSession.expunge, (SELECTED,)),
    "UID EXPUNGE": (IMAPSession.expunge, (SELECTED,)),
    "IDLE": (IMAPSession.idle, _AUTHENTICATED_STATES),
    "FETCH": (IMAPSession.fetch, (SELECTED,)),
    "UID FETCH": (IMAPSession.fetch, (SELECTED,)),
    "STORE": (IMAPSession.store_flags, (SELECTED,)),
    "UID STORE": (IMAPSession.store_flags, (SELECTED,)),
    "SEARCH": (IMAPSession.search, (SELECTED,)),
    "UID SEARCH": (IMAPSession.search, (SELECTED,)),
    "COPY": (IMAPSession.copy_or_move, (SELECTED,)),
    "UID COPY": (IMAPSession.copy_or_move, (SELECTED,)),
    "MOVE": (IMAPSession.copy_or_move, (SELECTED,)),
    "UID MOVE": (IMAPSession.copy_or_move, (SELECTED,)),
}
