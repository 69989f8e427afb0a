"""kombu's filesystem broker with messages that appear whole, are claimed once, and never crash a reader.

kombu's stock `Channel._put` opens the message file under its final name in the queue folder, then
flocks it and writes. Its `_get` takes no lock: it lists the folder, moves a file away and parses
it. A consumer that lists the folder between the writer's `open` and its `write` moves an empty (or
half-written) file: the parse raises `JSONDecodeError` out of the worker's consumer loop (or out of
flower's `inspect`, "Expecting value"), and the message is gone, since the file was already
removed.

Here the writer fills the file in a staging folder next to the queue folder and renames it into
place: on one filesystem a rename is atomic, so a reader sees the whole file or nothing. The reader
claims a file by renaming it into the processed folder (one rename succeeds, the others find it
gone: each message is delivered once) and parses it there; a file that does not parse is moved to a
quarantine folder with one log line, and the reader goes on with the next one. A new exchange
table (control folder) is likewise created whole before kombu's locked update writes to it.

No fsync: a power cut can lose queued messages or leave an empty file under its final name. The
database is the truth and the sweep sends the work again (DESIGN.md); the reader quarantines such an
empty file. An fsync per message would cost a disk flush for every task, event and pidbox reply.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from functools import cached_property
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

from tasks.eventqueues import message_queue

log = logging.getLogger(__name__)

TRANSPORT = "tasks.fsbroker:Transport"
# Task messages carry ids, events and pidbox replies a few kB: a larger file is not ours.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_LOGGED_NAME = 200
SUFFIX = ".msg"
STAGING = "staging"
# A write takes microseconds: a staged file this old (seconds) belongs to a writer that was killed.
STALE_STAGED_AGE = 60.0


def message_name(queue: str) -> str:
    """`<ms>_<uuid>.<queue>.msg`, kombu's naming (tasks/eventqueues.py parses it); the zero-padded
    time keeps the name order, which the reader follows, the order of sending."""
    return f"{time.time_ns() // 1_000_000:015d}_{uuid.uuid4().hex}.{queue}{SUFFIX}"


class Channel(filesystem.Channel):
    """Atomic put, claim-by-rename get, exchange tables created whole; the rest stays kombu's."""

    # kombu's filesystem Channel (our parent, whose name we keep) calls AbstractChannel's `message` `payload`.
    def _put(self, queue: str, payload: dict[str, Any], **_: Any) -> None:  # type: ignore[override]
        name = message_name(queue)
        staged = self.staging_folder / name
        try:
            with staged.open("xb") as file:
                file.write(dumps(payload).encode())
            os.rename(staged, Path(self.data_folder_out) / name)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise ChannelError(f"cannot queue a message for {queue[:MAX_LOGGED_NAME]!r}: {exc}") from exc

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        # kombu creates a missing exchange table with open("wb") before it locks it: a reader then
        # parses an empty table, and binders racing on a new table truncate each other's writes
        # (a shorter table over a longer one: "Extra data" from then on). So the table is created
        # whole first, by a link that fails if it exists; kombu then takes its locked update path.
        self._create_table(self._exchange_file(exchange))
        super()._queue_bind(exchange, routing_key, pattern, queue)

    def _create_table(self, table: Path) -> None:
        if table.exists():
            return
        table.parent.mkdir(parents=True, exist_ok=True)
        staged = self.staging_folder / f"{uuid.uuid4().hex}.exchange"
        try:
            staged.write_bytes(b"[]")
            os.link(staged, table)
        except FileExistsError:  # another binder created it first: its table is the one
            pass
        except OSError as exc:
            name = table.name[:MAX_LOGGED_NAME]
            raise ChannelError(f"cannot create the exchange table {name!r}: {exc}") from exc
        finally:
            staged.unlink(missing_ok=True)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        # `timeout` is kombu's signature; a poll of the folder does not wait.
        folder = Path(self.data_folder_in)
        for name in sorted(os.listdir(folder)):
            if message_queue(name) != queue:
                continue
            claimed = self.claim_folder / name
            try:
                os.rename(folder / name, claimed)
            except FileNotFoundError:  # another consumer claimed it first
                continue
            payload = self._read_claimed(claimed)
            if payload is not None:
                return payload
        raise Empty()

    def _read_claimed(self, claimed: Path) -> dict[str, Any] | None:
        """The message in a file this consumer claimed; None (file quarantined) if it is not one."""
        try:
            with claimed.open("rb") as file:
                data = file.read(MAX_MESSAGE_BYTES + 1)
        except OSError as exc:
            raise ChannelError(f"cannot read a claimed message: {exc}") from exc
        try:
            payload = parse_message(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            self._quarantine(claimed, exc)
            return None
        if not self.store_processed:
            claimed.unlink(missing_ok=True)
        return payload

    def _quarantine(self, claimed: Path, error: ValueError) -> None:
        """Keep a bad message for a human to see, out of every queue; say so once."""
        name = claimed.name[:MAX_LOGGED_NAME]
        try:
            os.rename(claimed, self.quarantine_folder / claimed.name)
        except OSError as exc:
            log.error("broker: message %r unreadable (%s), left in %s: %s", name, error, claimed.parent, exc)
            return
        log.error("broker: message %r unreadable (%s), moved to %s", name, error, self.quarantine_folder)

    @cached_property
    def staging_folder(self) -> Path:
        """Where messages are written before they appear: off the queue folder's listing, same filesystem."""
        return self._folder("staging_folder", STAGING)

    @cached_property
    def claim_folder(self) -> Path:
        return self._folder("processed_folder", "processed")

    @cached_property
    def quarantine_folder(self) -> Path:
        return self._folder("quarantine_folder", "quarantine")

    def _folder(self, option: str, default: str) -> Path:
        """A folder named in the transport options, by default a subfolder of the queue folder."""
        folder = Path(self.transport_options.get(option) or Path(self.data_folder_out) / default)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def prune_staging(staging: Path) -> int:
    """Remove what writers killed mid-write left in the staging folder; how many went."""
    if not staging.is_dir():
        return 0
    removed = 0
    cutoff = time.time() - STALE_STAGED_AGE
    for entry in os.scandir(staging):
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # renamed into place or removed meanwhile
            continue
    if removed:
        log.info("broker: removed %d unfinished message file(s) from %s", removed, staging)
    return removed


def parse_message(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"over {MAX_MESSAGE_BYTES} bytes")
    payload = loads(data.decode())
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    return payload


class Transport(filesystem.Transport):
    Channel = Channel
