"""Real mail clients against the IMAP server over loopback TLS (the test CA trusted through their own
configuration): mbsync and offlineimap synchronise the account both ways into a local Maildir (new
mail arrives, a flag set locally reaches the store, a message moved between folders and one deleted
locally are moved and deleted in the store); neomutt, driven in tmux, opens the account, shows a
message and saves it to another folder. Every outcome is checked in the store's rows."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from app.accounts import account_id
from app.db import session_scope
from app.store.mailboxes import ensure_mailbox, mailbox_messages, uid_state
from tests.imap.conftest import PASSWORD, IMAPClients
from tests.support.smtpfixtures import make_message
from tests.support.waiting import wait_until

MessageRows = dict[str, dict[str, object]]


def stored(clients: IMAPClients, mailbox: str) -> MessageRows:
    """The store's rows of admin's mailbox, by subject."""
    with session_scope(clients.server.config.resolved_database_url) as session:
        account = account_id(session, "admin")
        assert account is not None
        state = uid_state(session, account, mailbox)
        assert state is not None, mailbox
        return {str(row["subject"]): row for row in mailbox_messages(session, account, state.mailbox_id)}


@pytest.fixture
def tls_files(tmp_path: Path, tls_ca: trustme.CA) -> tuple[Path, Path]:
    """The server's certificate with a subject common name as well: mbsync 1.4 refuses one without."""
    cert = tls_ca.issue_cert("127.0.0.1", "localhost", common_name="127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


@pytest.fixture
def served(imap: IMAPClients, tls_ca: trustme.CA, tmp_path: Path) -> tuple[IMAPClients, Path]:
    """The server with two messages in Inbox, an Archive mailbox and the CA file the clients trust."""
    with session_scope(imap.server.config.resolved_database_url) as session:
        account = account_id(session, "admin")
        assert account is not None
        ensure_mailbox(session, account, "Archive")
    for n in (1, 2):
        imap.server.deliver(mail(f"first {n}"))
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    return imap, ca_file


def mail(subject: str) -> bytes:
    return make_message(
        "carol@example.net", "admin@example.org", subject=subject, body=f"Body of {subject}.\r\n"
    )


def run(command: list[str], **kwargs: object) -> None:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, **kwargs
    )  # type: ignore[call-overload]
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def maildir_files(folder: Path) -> dict[str, Path]:
    """The messages of a local Maildir folder (new and cur), by Subject."""
    found = {}
    for path in [*folder.glob("cur/*"), *folder.glob("new/*")]:
        for line in path.read_bytes().split(b"\n"):
            if line.startswith(b"Subject: "):
                found[line[9:].strip().decode()] = path
                break
    return found


def with_flag(path: Path, flag: str) -> Path:
    """Set a Maildir flag by renaming (info `:2,` followed by the flags in ASCII order)."""
    base, _, flags = path.name.partition(":2,")
    renamed = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(set(flags + flag)))}"
    path.rename(renamed)
    return renamed


def move_locally(path: Path, folder: Path, name: str) -> None:
    """A move as a Maildir client makes it: a new file (no client UID in its name) in the target, the
    original removed."""
    (folder / "cur" / f"{name}:2,S").write_bytes(path.read_bytes())
    path.unlink()


def local_changes(local: Path) -> None:
    """The same edits for every synchronising client: flag one message, move one, delete one, add one."""
    inbox = maildir_files(local / "INBOX")
    with_flag(inbox["first 1"], "F")
    move_locally(inbox["first 2"], local / "Archive", "1700000000.moved.local")
    delivered = maildir_files(local / "INBOX")
    delivered["second"].unlink()
    (local / "INBOX" / "cur" / "1700000000.added.local:2,S").write_bytes(mail("written locally"))


def assert_store_after_local_changes(clients: IMAPClients) -> None:
    inbox = stored(clients, "Inbox")
    assert sorted(inbox) == ["first 1", "written locally"]
    assert inbox["first 1"]["flagged"] is True and inbox["first 1"]["seen"] is True
    assert inbox["written locally"]["seen"] is True
    assert sorted(stored(clients, "Archive")) == ["first 2"]


def test_mbsync_synchronises_both_ways(served: tuple[IMAPClients, Path], tmp_path: Path) -> None:
    clients, ca_file = served
    local = tmp_path / "mbsync-mail"
    (local / "state").mkdir(parents=True)
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"""IMAPAccount pw
Host 127.0.0.1
Port {clients.server.tls_port}
User admin
Pass "{PASSWORD}"
SSLType IMAPS
CertificateFile {ca_file}
AuthMechs LOGIN

IMAPStore remote
Account pw

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel pw
Far :remote:
Near :local:
Patterns INBOX Archive
Create Near
Expunge Both
SyncState {local}/state/
"""
    )
    sync = ["mbsync", "-c", str(config), "-a"]
    run(sync)
    assert sorted(maildir_files(local / "INBOX")) == ["first 1", "first 2"]
    clients.server.deliver(mail("second"))
    run(sync)
    assert "second" in maildir_files(local / "INBOX")  # new mail arrives locally
    mark_seen(local / "INBOX")
    local_changes(local)
    run(sync)
    assert_store_after_local_changes(clients)
    run(sync)  # a second run finds nothing to do: the store and the Maildir agree
    assert sorted(maildir_files(local / "INBOX")) == ["first 1", "written locally"]


def mark_seen(folder: Path) -> None:
    for path in maildir_files(folder).values():
        with_flag(path, "S")


def test_offlineimap_synchronises_both_ways(served: tuple[IMAPClients, Path], tmp_path: Path) -> None:
    clients, ca_file = served
    local = tmp_path / "offlineimap-mail"
    config = tmp_path / "offlineimaprc"
    config.write_text(
        f"""[general]
accounts = pw
metadata = {tmp_path}/offlineimap-meta

[Account pw]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}
sep = /

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {clients.server.tls_port}
remoteuser = admin
remotepass = {PASSWORD}
ssl = yes
sslcacertfile = {ca_file}
folderfilter = lambda name: name in ("INBOX", "Archive")
createfolders = False
"""
    )
    sync = ["offlineimap", "-c", str(config), "-o", "-u", "quiet"]
    run(sync)
    assert sorted(maildir_files(local / "INBOX")) == ["first 1", "first 2"]
    clients.server.deliver(mail("second"))
    run(sync)
    assert "second" in maildir_files(local / "INBOX")
    mark_seen(local / "INBOX")
    local_changes(local)
    run(sync)
    assert_store_after_local_changes(clients)
    run(sync)
    assert sorted(maildir_files(local / "INBOX")) == ["first 1", "written locally"]


class Tmux:
    """A tmux server of the test's own (its socket under tmp_path) running one program in a pane."""

    def __init__(self, socket: Path, command: list[str], env: dict[str, str]) -> None:
        self.base = ["tmux", "-S", str(socket)]
        self.env = env
        self.tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "50", *command)

    def tmux(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=10, env=self.env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not on the screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10, env=self.env)


def test_neomutt_reads_a_message_and_saves_it_to_another_folder(
    served: tuple[IMAPClients, Path], tmp_path: Path
) -> None:
    clients, ca_file = served
    home = tmp_path / "home"
    home.mkdir()
    muttrc = home / "muttrc"
    muttrc.write_text(
        f"""set folder = "imaps://admin@127.0.0.1:{clients.server.tls_port}/"
set spoolfile = "+INBOX"
set imap_pass = "{PASSWORD}"
set ssl_ca_certificates_file = "{ca_file}"
set certificate_file = "{home}/certificates"
set header_cache = ""
set message_cachedir = ""
set record = ""
set postponed = ""
set mbox_type = Maildir
set confirmappend = no
set delete = yes
set quit = yes
set move = no
set sort = date
set pager_stop = yes
set mail_check = 1
set imap_keepalive = 60
set timeout = 1
"""
    )
    env = {**os.environ, "HOME": str(home), "TERM": "xterm-256color"}
    assert shutil.which("neomutt") and shutil.which("tmux")
    term = Tmux(tmp_path / "tmux.sock", ["neomutt", "-n", "-F", str(muttrc)], env)
    try:
        term.wait_for("first 2")  # the index of INBOX
        term.keys("Enter")  # open the current message (the last one: sort by date, cursor at the end)
        screen = term.wait_for("Body of first")
        assert "Subject: first" in screen
        term.keys("q")
        term.wait_for("first 2")
        term.keys("s")
        term.wait_for("Save to mailbox")
        term.keys("C-u", "=Archive", "Enter")
        wait_until(lambda: len(stored(clients, "Archive")) == 1, timeout=20.0, what="the message in Archive")
        term.keys("$")  # sync: the saved (deleted) original is expunged
        wait_until(lambda: len(stored(clients, "Inbox")) == 1, timeout=20.0, what="one message left in Inbox")
        term.keys("q")
    finally:
        term.kill()
    (subject,) = stored(clients, "Archive")
    assert subject.startswith("first") and sorted([*stored(clients, "Inbox"), subject]) == [
        "first 1",
        "first 2",
    ]
