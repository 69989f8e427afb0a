"""The mailbox commands: CREATE, DELETE, RENAME (RFC 9051 6.3.4-6.3.6), SUBSCRIBE and UNSUBSCRIBE
(the account's subscription list), LIST with its selection and return options (RFC 9051 6.3.9,
RFC 5258, RFC 6154 SPECIAL-USE, RFC 5819 STATUS) and LSUB, and STATUS.

Mailboxes the config names (the inbox, Junk, Rejects, delivery targets) are neither deleted nor
renamed: the config sync would make them again and delivery files mail into them by name. A
mailbox with inferiors is not deleted (NO [HASCHILDREN]): no mailbox here is kept as \\Noselect.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from app.imap import responses
from app.imap.errors import CommandFailed
from app.imap.mailstore import INBOX, AccountStore
from app.imap.names import DELIMITER, BadName, decode_mutf7, encode_mutf7, new_name, parents

if TYPE_CHECKING:
    from app.imap.parser import Command
    from app.imap.session import IMAPSession

MOVE_BATCH = 500
# The special-use attributes (RFC 6154) LIST shows; the SPECIAL-USE selection option picks these.
_SPECIAL_USE = frozenset({"\\Junk", "\\Sent", "\\Drafts", "\\Trash", "\\Archive", "\\All", "\\Flagged"})


def decode_names(command: Command, utf8: bool) -> None:
    """Turn the command's mailbox names from modified UTF-7 into names, for a client that has not
    enabled UTF-8 (RFC 6855). A pattern that is not valid modified UTF-7 is matched as sent."""
    if utf8:
        return
    for key in ("mailbox", "new"):
        if key in command.args:
            try:
                command.args[key] = decode_mutf7(str(command.args[key]))
            except BadName as e:
                raise CommandFailed("BAD", str(e)) from None
    if "patterns" in command.args:
        command.args["reference"] = _lenient(str(command.args["reference"]))
        command.args["patterns"] = [_lenient(p) for p in command.args["patterns"]]  # type: ignore[attr-defined]


def _lenient(pattern: str) -> str:
    try:
        return decode_mutf7(pattern)
    except BadName:
        return pattern


def wire_name(name: str, utf8: bool) -> bytes:
    """The name as a response shows it: UTF-8 after ENABLE UTF8=ACCEPT, else modified UTF-7."""
    return responses.string(name if utf8 else encode_mutf7(name))


def _new_name(name: str) -> str:
    try:
        return new_name(name)
    except BadName as e:
        raise CommandFailed("BAD" if e.malformed else "NO", str(e)) from None


def _account(session: IMAPSession) -> AccountStore:
    assert session.store is not None  # the command table allows these commands only when logged in
    return session.store


async def create(session: IMAPSession, command: Command) -> None:
    """Make the mailbox and any missing parents (RFC 9051 6.3.4: SHOULD); it starts subscribed."""
    name = _new_name(str(command.args["mailbox"]))
    if name == INBOX or not await _account(session).create([*parents(name), name]):
        raise CommandFailed("NO", "[ALREADYEXISTS] The mailbox exists already")
    await session.ok(command, "CREATE completed")


async def delete(session: IMAPSession, command: Command) -> None:
    """Delete a mailbox the user made, with its messages; its subscription stays (RFC 9051 6.3.5)."""
    account, name = _account(session), str(command.args["mailbox"])
    _refuse_configured(account, name, "deleted")
    state = await account.uid_state(name)
    if state is None:
        raise CommandFailed("NO", "[NONEXISTENT] No such mailbox")
    if any(n.startswith(name + DELIMITER) for n in await account.names()):
        raise CommandFailed("NO", "[HASCHILDREN] Delete the mailboxes inside it first")
    if session.selection is not None and session.selection.mailbox_id == state.mailbox_id:
        raise CommandFailed("NO", "[INUSE] The mailbox is selected: close it first")
    await account.delete(state.mailbox_id)
    await session.ok(command, "DELETE completed")


def _refuse_configured(account: AccountStore, name: str, done: str) -> None:
    if name == INBOX or account.store_name(name) in account.configured:
        raise CommandFailed("NO", f"[CANNOT] {name} is a mailbox the server delivers to; it cannot be {done}")


async def rename(session: IMAPSession, command: Command) -> None:
    """Rename a mailbox with its inferiors (their messages and UIDs stay); RENAME INBOX moves its
    messages into the new mailbox and leaves INBOX empty (RFC 9051 6.3.6)."""
    account, old = _account(session), str(command.args["mailbox"])
    new = _new_name(str(command.args["new"]))
    if old != INBOX:
        _refuse_configured(account, old, "renamed")
    names = await account.names()
    if old not in names:
        raise CommandFailed("NO", "[NONEXISTENT] No such mailbox")
    if new == INBOX or new in names:
        raise CommandFailed("NO", "[ALREADYEXISTS] A mailbox with the new name exists already")
    if old == INBOX:
        await _move_inbox(session, new)
    else:
        await _rename_tree(account, names, old, new)
    await session.ok(command, "RENAME completed")


async def _rename_tree(account: AccountStore, names: list[str], old: str, new: str) -> None:
    if new.startswith(old + DELIMITER):
        raise CommandFailed("NO", "[CANNOT] A mailbox cannot be moved inside itself")
    inferiors = [n for n in names if n.startswith(old + DELIMITER)]
    if any(account.store_name(n) in account.configured for n in inferiors):
        raise CommandFailed("NO", "[CANNOT] A mailbox inside it is one the server delivers to")
    mapping = {old: new, **{n: new + n[len(old) :] for n in inferiors}}
    if any(target in names for target in mapping.values()):
        raise CommandFailed("NO", "[ALREADYEXISTS] A mailbox with one of the new names exists already")
    await account.rename(mapping, [p for p in parents(new) if p not in names])


async def _move_inbox(session: IMAPSession, new: str) -> None:
    """Every message of INBOX into the new mailbox, through the store's move_messages (R3.3)."""
    account = _account(session)
    await account.create([*parents(new), new])
    state = await account.uid_state(INBOX)
    assert state is not None  # the config sync makes the inbox
    rows = await account.all_rows(state.mailbox_id)
    for start in range(0, len(rows), MOVE_BATCH):
        await account.move([row["id"] for row in rows[start : start + MOVE_BATCH]], new, copy=False)


async def subscribe(session: IMAPSession, command: Command) -> None:
    account, name = _account(session), str(command.args["mailbox"])
    if command.name == "SUBSCRIBE":
        if await account.uid_state(name) is None:
            raise CommandFailed("NO", "[NONEXISTENT] No such mailbox")
        await account.subscribe(name)
    elif not await account.unsubscribe(name):
        raise CommandFailed("NO", "[NONEXISTENT] The name is not subscribed")
    await session.ok(command, f"{command.name} completed")


async def status(session: IMAPSession, command: Command) -> None:
    name = str(command.args["mailbox"])
    line = await status_line(session, name, command.args["items"])  # type: ignore[arg-type]
    if line is None:
        raise CommandFailed("NO", "[NONEXISTENT] No such mailbox")
    await session.send(line)
    await session.ok(command, "STATUS completed")


async def status_line(session: IMAPSession, name: str, items: list[str]) -> bytes | None:
    """The untagged STATUS response of the mailbox; None if there is no such mailbox."""
    account = _account(session)
    state = await account.uid_state(name)
    summary = await account.summary(name)
    if state is None or summary is None:
        return None
    values = {
        "MESSAGES": summary["messages"],
        "UNSEEN": summary["unseen"],
        "UIDNEXT": state.uidnext,
        "UIDVALIDITY": state.uidvalidity,
        "RECENT": 0,
        "SIZE": summary["size"],
        "DELETED": await account.deleted_count(state.mailbox_id) if "DELETED" in items else 0,
        "HIGHESTMODSEQ": state.highestmodseq,  # CONDSTORE (RFC 7162 3.1.10)
    }
    shown = " ".join(f"{item} {values[item]}" for item in items)
    return b"* STATUS " + wire_name(name, session.utf8) + f" ({shown})\r\n".encode()


async def list_mailboxes(session: IMAPSession, command: Command) -> None:
    """LIST and LSUB. Names are the account's mailboxes and the parents their names imply (shown
    \\NonExistent, or \\Noselect under LSUB), or with SUBSCRIBED the subscribed names."""
    args = command.args
    select: list[str] = args["select"]  # type: ignore[assignment]
    returned: dict[str, list[str]] = args["return"]  # type: ignore[assignment]
    patterns: list[str] = args["patterns"]  # type: ignore[assignment]
    if patterns == [""] and command.name == "LIST" and not select:  # the delimiter (RFC 9051 6.3.9)
        await session.send(b'* LIST (\\Noselect) "/" ""\r\n')
        await session.ok(command, "LIST completed")
        return
    account = _account(session)
    listed = {box.name: box.attributes for box in await account.mailboxes()}
    wants_subscribed = "SUBSCRIBED" in select or "SUBSCRIBED" in returned
    subscribed = set(await account.subscriptions()) if wants_subscribed else set()
    wanted = [_pattern_regex(str(args["reference"]) + p) for p in patterns]
    for name in _candidates(listed, subscribed, select):
        if not any(w.fullmatch(name) for w in wanted):
            continue
        attributes = _attributes(name, listed, subscribed, wants_subscribed, lsub=command.name == "LSUB")
        if "SPECIAL-USE" in select and not _SPECIAL_USE.intersection(attributes):
            continue
        extra = _childinfo(name, subscribed) if "RECURSIVEMATCH" in select else b""
        if "SUBSCRIBED" in select and name not in subscribed and not extra:
            continue
        line = f'* {command.name} ({" ".join(attributes)}) "/" '.encode() + wire_name(name, session.utf8)
        await session.send(line + extra + b"\r\n")
        if "STATUS" in returned and name in listed:  # RFC 5819: selectable mailboxes only
            status = await status_line(session, name, returned["STATUS"])
            if status is not None:
                await session.send(status)
    await session.ok(command, f"{command.name} completed")


def _candidates(listed: dict[str, tuple[str, ...]], subscribed: set[str], select: list[str]) -> list[str]:
    """The names LIST looks at, INBOX first: the mailboxes and the parents their names imply, or
    the subscribed names (with RECURSIVEMATCH, and their parents)."""
    names = set(subscribed) if "SUBSCRIBED" in select else set(listed)
    if "SUBSCRIBED" not in select or "RECURSIVEMATCH" in select:
        names |= {parent for name in names for parent in parents(name)}
    return sorted(names, key=lambda n: (n != INBOX, n))


def _attributes(
    name: str, listed: dict[str, tuple[str, ...]], subscribed: set[str], show_subscribed: bool, *, lsub: bool
) -> list[str]:
    if lsub:
        return [] if name in listed else ["\\Noselect"]
    attributes = list(listed.get(name, ("\\NonExistent",)))
    children = any(n.startswith(name + DELIMITER) for n in listed)
    attributes.append("\\HasChildren" if children else "\\HasNoChildren")
    if show_subscribed and name in subscribed:
        attributes.append("\\Subscribed")
    return attributes


def _childinfo(name: str, subscribed: set[str]) -> bytes:
    """RFC 5258 CHILDINFO: the name has subscribed inferiors (RECURSIVEMATCH)."""
    if any(n.startswith(name + DELIMITER) for n in subscribed):
        return b' ("CHILDINFO" ("SUBSCRIBED"))'
    return b""


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A LIST pattern as a regular expression: * matches anything, % anything but the delimiter;
    INBOX in any case is INBOX."""
    if pattern.upper() == INBOX:
        pattern = INBOX
    parts = (".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    return re.compile("".join(parts))
