"""A Dovecot of the test's own (Debian dovecot-imapd): a configuration in a temporary directory, one
account in a passwd file, Maildir storage there, implicit TLS on a free loopback port; started in the
foreground and stopped by the test. The reference the IMAP differential test and benchmark compare
our server with."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

DOVECOT = "/usr/sbin/dovecot"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _users() -> tuple[str, str, int, int]:
    """Login and internal service users and the mail uid/gid: Dovecot's own users when run as root
    (it refuses root for them), the current user otherwise."""
    if os.getuid() != 0:
        me = pwd.getpwuid(os.getuid())
        return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid
    dovecot = pwd.getpwnam("dovecot")
    return "dovenull", "dovecot", dovecot.pw_uid, dovecot.pw_gid


def _config(directory: Path, port: int, cert: Path, key: Path, mailboxes: dict[str, str]) -> str:
    login_user, internal_user, uid, gid = _users()
    auto = "\n".join(
        f"  mailbox {name} {{\n    auto = create\n    special_use = {use}\n  }}"
        for name, use in mailboxes.items()
    )
    return f"""base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{directory}/mail/%u:LAYOUT=fs
passdb {{
  driver = passwd-file
  args = {directory}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={directory}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
{auto}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


class Dovecot(NamedTuple):
    port: int  # IMAPS on 127.0.0.1
    maildir: Path  # the user's Maildir (INBOX's cur/new/tmp), made before the first login
    owner: tuple[int, int]  # the uid and gid its files must have


@contextmanager
def dovecot(cert: Path, key: Path, user: str, password: str, mailboxes: dict[str, str]) -> Iterator[Dovecot]:
    """Run Dovecot with `user`/`password` and the extra `mailboxes` (name: special-use attribute or
    "")."""
    directory = Path(tempfile.mkdtemp(prefix="pw-dovecot-"))
    directory.chmod(0o755)  # its login and mail processes run as other users
    _, _, uid, gid = _users()
    maildir = directory / "mail" / user
    for sub in ("mail", "home", f"mail/{user}", f"mail/{user}/cur", f"mail/{user}/new", f"mail/{user}/tmp"):
        (directory / sub).mkdir()
        os.chown(directory / sub, uid, gid)
    shutil.copy(cert, directory / "cert.pem")
    shutil.copy(key, directory / "key.pem")
    (directory / "passwd").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
    port = free_port()
    conf = directory / "dovecot.conf"
    conf.write_text(_config(directory, port, directory / "cert.pem", directory / "key.pem", mailboxes))
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process, directory)
        yield Dovecot(port, maildir, (uid, gid))
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], directory: Path, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    log = directory / "dovecot.log"
    raise RuntimeError(f"dovecot did not listen on {port}:\n{log.read_text() if log.exists() else ''}")
