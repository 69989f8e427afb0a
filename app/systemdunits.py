"""systemd units for the Procfile's processes (`postwarden systemd`).

honcho stops every process when one exits, which suits `make run` but not a server: under systemd
each process is a service of its own, restarted alone when it fails, run as an unprivileged user
in a read-only view of the system, and grouped by `postwarden.target`. The commands are the
Procfile's, with the venv's executables as absolute paths (tests/test_systemd_units.py keeps the two
in step and checks the units with `systemd-analyze verify`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from app.config import Config
from app.process import WORKER_STOP_GRACE_VARIABLE
from app.smtpserver.handoff import PUBLISHER_CLOSE_TIMEOUT
from app.smtpserver.workers import STOP_TIMEOUT as SMTP_WORKERS_STOP_TIMEOUT

TARGET = "postwarden.target"
# Ports below this need CAP_NET_BIND_SERVICE (net.ipv4.ip_unprivileged_port_start's default).
FIRST_UNPRIVILEGED_PORT = 1024
# Seconds systemd gives a process between SIGTERM and SIGKILL beyond its own stop time.
STOP_MARGIN = 10
# The stop timeout of the processes that stop in a few seconds (imap waits at most 10 s for its
# sessions to end; measured: 2-4 s for imap, beat, web and flower).
QUICK_STOP = 30
# A worker's warm shutdown lets its running tasks finish; a delivery can take minutes (a slow
# server, `delivery.transaction_timeout`), so it ends itself after this many seconds. What it drops
# costs nothing: its leases lapse and the sweep hands the rows to another run (at most the message
# in flight is sent twice, docs/architecture.md).
WORKER_STOP_GRACE = 60
# File descriptors of the processes that hold client connections (the SMTP supervisor warns when the
# limit caps `limits.max_sessions`).
CONNECTION_FILE_LIMIT = 65536
# The Procfile's worker concurrency; see the README's production section for choosing another.
WORKER_CONCURRENCY = 2
# Names useradd accepts everywhere; paths systemd takes as written (no quoting, no %-specifiers).
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/+@:,=-]*$")
# What ProtectHome= hides.
HOME_DIRECTORIES = (Path("/home"), Path("/root"), Path("/run/user"))

# What every service gets: a read-only system (but the paths it writes), no home directories (see
# home_paths), its own /tmp, /dev and mounts, files only its user reads, no way to gain privileges,
# load modules or change the kernel, clock or cgroups, no memory both writable and executable
# (CPython has no JIT; traced: no such mapping), and only the system calls and socket families a
# network service uses.
HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "RemoveIPC=yes",
    "PrivateMounts=yes",
    "UMask=0077",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged",
    "SystemCallErrorNumber=EPERM",
)


class UnitError(ValueError):
    """A setting the units cannot be written with; the message is meant for the operator."""


@dataclass(frozen=True)
class UnitOptions:
    """What the units need beyond the config: where the venv's executables are, the config file
    (absolute), who runs the processes, and the Celery worker's concurrency."""

    bin_dir: Path
    config_file: Path
    user: str = "postwarden"
    group: str = "postwarden"
    worker_concurrency: int = WORKER_CONCURRENCY


@dataclass(frozen=True)
class Process:
    """One Procfile process as a service."""

    name: str
    description: str
    # The Procfile's command: an executable of the venv, then its arguments.
    command: tuple[str, ...]
    stop_seconds: int
    binds_privileged_port: bool = False
    # The supervisor (smtp) or the Celery main process (worker) stops its children itself: systemd
    # signals only the main process, then SIGKILLs whatever is left at the timeout.
    stops_children: bool = False
    holds_connections: bool = False
    environment: tuple[str, ...] = ()
    writes_data: bool = True


def processes(config: Config, worker_concurrency: int = WORKER_CONCURRENCY) -> tuple[Process, ...]:
    """The Procfile's processes, in its order. smtp and imap serve mail ports, all privileged (25,
    587, 143, 993), so they may bind them even before the config names one (IMAP stays commented
    out until there is a certificate); the web gets the capability only for a privileged web.port."""
    return (
        Process(
            "smtp",
            "Postwarden SMTP (inbound and submission)",
            ("postwarden", "smtp"),
            # The supervisor gives its workers STOP_TIMEOUT, then its task publisher its own time.
            int(SMTP_WORKERS_STOP_TIMEOUT + PUBLISHER_CLOSE_TIMEOUT) + STOP_MARGIN,
            binds_privileged_port=True,
            stops_children=True,
            holds_connections=True,
        ),
        Process(
            "imap",
            "Postwarden IMAP",
            ("postwarden", "imap"),
            QUICK_STOP,
            binds_privileged_port=True,
            holds_connections=True,
        ),
        Process(
            "worker",
            "Postwarden Celery worker (delivery, reports)",
            (
                "celery",
                "-A",
                "tasks",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={worker_concurrency}",
                "--without-gossip",
                "--without-mingle",
            ),
            WORKER_STOP_GRACE + STOP_MARGIN,
            stops_children=True,
            environment=(f"{WORKER_STOP_GRACE_VARIABLE}={WORKER_STOP_GRACE}",),
        ),
        Process(
            "beat",
            "Postwarden Celery beat (periodic jobs)",
            ("celery", "-A", "tasks", "beat", "--loglevel=INFO"),
            QUICK_STOP,
        ),
        Process(
            "web",
            "Postwarden web",
            ("postwarden", "web"),
            QUICK_STOP,
            binds_privileged_port=0 < config.web.port < FIRST_UNPRIVILEGED_PORT,
        ),
        Process(
            "flower",
            "Postwarden flower (Celery task monitor)",
            ("python", "-m", "tasks.flower", "--address=127.0.0.1", "--port=5555"),
            QUICK_STOP,
            # Only the filesystem broker keeps its queues in the data directory.
            writes_data=config.resolved_broker_url.startswith("filesystem"),
        ),
    )


def unit_name(process: Process) -> str:
    return f"postwarden-{process.name}.service"


def write_units(config: Config, options: UnitOptions, names: list[str] | None, output: Path) -> list[Path]:
    """Write the units of the processes `names` (all when None) and the target into `output`."""
    files = units(config, options, names)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = output / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def units(config: Config, options: UnitOptions, names: list[str] | None = None) -> dict[str, str]:
    """File name -> text: one service per chosen process, and the target that wants them."""
    _check_options(options)
    chosen = [p for p in processes(config, options.worker_concurrency) if names is None or p.name in names]
    unknown = sorted(set(names or ()) - {p.name for p in chosen})
    if unknown:
        raise UnitError(f"no process named {', '.join(unknown)} (the Procfile's: {_all_names(config)})")
    _check_executables(options.bin_dir, chosen)
    files = {unit_name(p): service(config, options, p) for p in chosen}
    files[TARGET] = target(chosen)
    return files


def _check_executables(bin_dir: Path, chosen: list[Process]) -> None:
    """A unit whose ExecStart does not exist fails only when started: say so now."""
    for name in sorted({p.command[0] for p in chosen}):
        if not (bin_dir / name).is_file():
            raise UnitError(
                f"{bin_dir / name} does not exist (--bin-dir: the bin folder of Postwarden's venv)"
            )


def _all_names(config: Config) -> str:
    return ", ".join(p.name for p in processes(config))


def _check_options(options: UnitOptions) -> None:
    for what, name in (("user", options.user), ("group", options.group)):
        if not _NAME.match(name):
            raise UnitError(f"{what} {name!r} is not a system user or group name ([a-z_][a-z0-9_-]*)")
    for what, path in (("executables' directory", options.bin_dir), ("config file", options.config_file)):
        _plain_path(what, path)


def _plain_path(what: str, path: Path) -> str:
    """`path` as systemd reads it unquoted: absolute, without spaces, quotes, `%` or `$`."""
    text = str(path)
    if not _PLAIN_PATH.match(text):
        raise UnitError(
            f"{what} {text!r} must be an absolute path of letters, digits and ._/+@:,=- only "
            "(systemd would split or expand anything else)"
        )
    return text


def writable_paths(config: Config) -> list[str]:
    """The data directory, and a SQLite database's directory when it lies elsewhere (SQLite writes
    its journal beside the file)."""
    paths = [config.data_dir]
    url = make_url(config.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = Path(url.database).parent
        if folder.is_absolute() and not folder.is_relative_to(config.data_dir):
            paths.append(folder)
    return [_plain_path("data directory", p) for p in paths]


def after_units(config: Config) -> list[str]:
    """The network, and the local database and broker services when the config uses them (an
    After= naming a unit that does not exist is ignored, so a remote server costs nothing)."""
    after = ["network-online.target"]
    if make_url(config.resolved_database_url).get_backend_name() == "postgresql":
        after.append("postgresql.service")
    if config.resolved_broker_url.startswith(("redis", "rediss")):
        after.append("redis-server.service")
    return after


def service(config: Config, options: UnitOptions, process: Process) -> str:
    executable, *arguments = process.command
    exec_start = " ".join([str(options.bin_dir / executable), *arguments])
    after = " ".join(after_units(config))
    environment = [f"POSTWARDEN_CONFIG={options.config_file}", *process.environment]
    lines = [
        "# Written by `postwarden systemd`; write it again after changing listeners, data_dir,",
        "# database_url or broker_url.",
        "[Unit]",
        f"Description={process.description}",
        f"PartOf={TARGET}",
        "Wants=network-online.target",
        f"After={after}",
        "",
        "[Service]",
        "Type=exec",
        f"User={options.user}",
        f"Group={options.group}",
        f"WorkingDirectory={options.config_file.parent}",
        *(f"Environment={item}" for item in environment),
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "RestartSec=5",
        f"TimeoutStopSec={process.stop_seconds}",
        *(["KillMode=mixed"] if process.stops_children else []),
        *([f"LimitNOFILE={CONNECTION_FILE_LIMIT}"] if process.holds_connections else []),
        *_capabilities(process),
        *HARDENING,
        *_home_protection(options),
        *(f"ReadWritePaths={path}" for path in (writable_paths(config) if process.writes_data else [])),
        "",
        "[Install]",
        f"WantedBy={TARGET}",
        "",
    ]
    return "\n".join(lines)


def home_paths(bin_dir: Path) -> list[Path]:
    """What the processes read from under a home directory: the venv, the Python it was made from
    (pyenv keeps it in ~/.pyenv) and this package's source (an editable install's checkout)."""
    python = (bin_dir / "python").resolve()
    needed = [bin_dir.parent, python.parent.parent, Path(__file__).resolve().parent.parent]
    found = [p for p in needed if any(p.is_relative_to(home) for home in HOME_DIRECTORIES)]
    return sorted(set(found))


def _home_protection(options: UnitOptions) -> list[str]:
    """Home directories hidden, or, when the processes need something in one, an empty tmpfs over
    them with just those paths mounted back, read-only."""
    paths = home_paths(options.bin_dir)
    if not paths:
        return ["ProtectHome=yes"]
    return ["ProtectHome=tmpfs", *(f"BindReadOnlyPaths={_plain_path('home path', p)}" for p in paths)]


def _capabilities(process: Process) -> list[str]:
    """Binding a port below 1024 is the one privilege a process may need; the others get none."""
    if process.binds_privileged_port:
        return [
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        ]
    return ["CapabilityBoundingSet="]


def target(chosen: list[Process]) -> str:
    wanted = " ".join(unit_name(p) for p in chosen)
    return "\n".join(
        [
            "# Written by `postwarden systemd`: start, stop and restart every Postwarden process at once.",
            "[Unit]",
            "Description=Postwarden mail server",
            f"Wants={wanted}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )
