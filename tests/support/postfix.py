"""A Postfix of the benchmark's own (Debian postfix): a second instance with its own configuration,
queue and data directories in a temporary directory, one smtpd on a free loopback port, no milters,
no DNS, and virtual(8) delivery of every recipient in one domain to one Maildir. Started with
`postfix -c DIR start` and stopped with `postfix -c DIR stop`; its processes are gone on return.
The reference tests/bench/inbound.py compares our inbound listener with. Needs root (Postfix's
master drops to its own users)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from tests.support.dovecot import free_port
from tests.support.proctree import alive, process_tree
from tests.support.waiting import wait_until

POSTFIX = "/usr/sbin/postfix"
MAILBOX_OWNER = "nobody"  # virtual(8) refuses root; the Maildir belongs to this user

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
proxymap unix - - n - - proxymap
error unix - - n - - error
retry unix - - n - - error
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_client_restrictions =
smtpd_peername_lookup = no
smtp_host_lookup = native
smtp_dns_support_level = disabled
disable_dns_lookups = yes
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {directory}/mail
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file_prefixes = {directory}
maillog_file = {directory}/maillog
biff = no
"""


class Postfix(NamedTuple):
    port: int  # SMTP on 127.0.0.1
    maildir: Path  # where every accepted message is delivered (its new/)
    directory: Path  # config, queue, data, mail and the log

    def master_pid(self) -> int:
        return int((self.directory / "queue" / "pid" / "master.pid").read_text().split()[0])

    def delivered(self) -> int:
        new = self.maildir / "new"
        return sum(1 for _ in new.iterdir()) if new.is_dir() else 0

    def log(self) -> str:
        log = self.directory / "maillog"
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def unavailable() -> str | None:
    """Why this machine cannot run the reference Postfix, or None if it can."""
    if not Path(POSTFIX).exists() or shutil.which("postconf") is None:
        return f"Postfix is not installed ({POSTFIX} missing: apt-get install postfix)"
    if os.getuid() != 0:
        return "Postfix needs root to start (its master switches to the postfix user)"
    return None


@contextmanager
def postfix(domain: str) -> Iterator[Postfix]:
    """Run the instance; every address in `domain` is delivered to the one Maildir."""
    directory = Path(tempfile.mkdtemp(prefix="pw-postfix-"))
    directory.chmod(0o755)  # its daemons run as postfix and nobody
    owner = pwd.getpwnam(MAILBOX_OWNER)
    for sub in ("conf", "queue", "data", "mail"):
        (directory / sub).mkdir()
    os.chown(directory / "data", pwd.getpwnam("postfix").pw_uid, -1)
    os.chown(directory / "mail", owner.pw_uid, owner.pw_gid)
    port = free_port()
    conf = directory / "conf"
    (conf / "master.cf").write_text(_MASTER_CF.format(port=port))
    main = _MAIN_CF.format(directory=directory, domain=domain, uid=owner.pw_uid, gid=owner.pw_gid)
    (conf / "main.cf").write_text(main)
    instance = Postfix(port, directory / "mail" / "inbox", directory)
    try:
        _postfix(conf, "start")
        yield instance
    finally:
        _stop(conf, instance)
        shutil.rmtree(directory, ignore_errors=True)


def _postfix(conf: Path, command: str) -> None:
    done = subprocess.run(
        [POSTFIX, "-c", str(conf), command],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        log = (conf.parent / "maillog").read_text() if (conf.parent / "maillog").exists() else ""
        raise RuntimeError(f"postfix {command} failed ({done.returncode}): {done.stderr}\n{log[-3000:]}")


def _stop(conf: Path, instance: Postfix) -> None:
    """`postfix stop`, then wait until the master and every process it started have exited."""
    try:
        pids = process_tree(instance.master_pid())
    except (OSError, ValueError):
        return  # it never started
    _postfix(conf, "stop")
    wait_until(lambda: not any(alive(pid) for pid in pids), 30, "every postfix process exited")
