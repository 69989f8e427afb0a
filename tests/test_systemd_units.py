"""`postwarden systemd`: one unit per Procfile process, running the Procfile's command from the venv,
hardened, and accepted by systemd itself (`systemd-analyze verify`, and `security --offline` under a
bound); a broken unit is caught by the same check."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from app.systemdunits import HARDENING, HOME_DIRECTORIES, home_paths
from tests.support.configs import write_config

ROOT = Path(__file__).resolve().parent.parent
# The venv's executables: `systemd-analyze verify` refuses an ExecStart that does not exist.
BIN_DIR = Path(sys.executable).parent
# `systemd-analyze security` rates exposure 0.0 (locked down) to 10.0; --threshold takes tenths.
# The units score 1.4-1.5 (docs/systemd.md); a lost hardening option shows here.
MOST_EXPOSURE = 20
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def generate(config: Path, output: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["--config", str(config), "systemd", "--output", str(output), "--bin-dir", str(BIN_DIR), *args]
    )
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def units(tmp_path: Path, extra: str = "", **config: str) -> dict[str, str]:
    """Unit file name -> text, generated for a test config."""
    output = tmp_path / "units"
    code, out = generate(write_config(tmp_path / "etc", extra, **config), output)
    assert code == 0, out
    return {path.name: path.read_text() for path in sorted(output.iterdir())}


def directives(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def verify_problems(paths: list[Path]) -> str:
    """What `systemd-analyze verify` says about the units: it exits 0 on an unknown key or a value it
    cannot parse (it only warns, and ignores the line), so anything it prints is a problem."""
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True, timeout=60
    )
    return (
        f"exit {result.returncode}: {result.stdout}{result.stderr}"
        if (result.returncode or result.stdout or result.stderr)
        else ""
    )


def procfile() -> dict[str, list[str]]:
    """Process name -> its command, without the leading VARIABLE=value assignments."""
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, command = line.split(":", 1)
        words = shlex.split(command)
        while "=" in words[0]:
            words.pop(0)
        commands[name] = words
    return commands


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    output = tmp_path / "units"
    code, out = generate(write_config(tmp_path / "etc"), output)
    assert code == 0, out
    written = [Path(line) for line in out.splitlines()]
    assert sorted(written) == sorted(output.iterdir()) and len(written) == 7
    assert verify_problems(written) == ""


@pytest.mark.parametrize(
    ("line", "broken", "said"),
    [
        ("ProtectSystem=strict", "ProtectSytem=strict", "Unknown key 'ProtectSytem'"),
        ("ProtectSystem=strict", "ProtectSystem=stric", "Failed to parse protect system value"),
        ("Restart=on-failure", "Restart=sometimes", "Failed to parse service restart specifier"),
    ],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, line: str, broken: str, said: str) -> None:
    unit = tmp_path / "units" / "postwarden-beat.service"
    generate(write_config(tmp_path / "etc"), unit.parent)
    text = unit.read_text()
    assert f"\n{line}\n" in text
    unit.write_text(text.replace(f"\n{line}\n", f"\n{broken}\n"))
    assert said in verify_problems([unit])


def test_verify_catches_a_missing_executable(tmp_path: Path) -> None:
    unit = tmp_path / "units" / "postwarden-web.service"
    generate(write_config(tmp_path / "etc"), unit.parent)
    unit.write_text(unit.read_text().replace(f"ExecStart={BIN_DIR}/", "ExecStart=/nowhere/"))
    assert "Command /nowhere/postwarden is not executable" in verify_problems([unit])


def test_every_procfile_process_has_a_unit_running_its_command(tmp_path: Path) -> None:
    files = units(tmp_path)
    commands = procfile()
    assert set(files) == {f"postwarden-{name}.service" for name in commands} | {"postwarden.target"}
    assert directives(files["postwarden.target"], "Wants") == [
        " ".join(f"postwarden-{name}.service" for name in commands)
    ]
    for name, command in commands.items():
        text = files[f"postwarden-{name}.service"]
        (exec_start,) = directives(text, "ExecStart")
        executable, *arguments = exec_start.split()
        assert executable == str(BIN_DIR / command[0]) and arguments == command[1:], name
        assert directives(text, "WantedBy") == ["postwarden.target"]
        assert directives(text, "PartOf") == ["postwarden.target"]


def test_every_unit_is_hardened_and_unprivileged(tmp_path: Path) -> None:
    files = units(tmp_path)
    data = str((tmp_path / "etc" / "data").resolve())
    for name, text in files.items():
        if name.endswith(".target"):
            continue
        lines = text.splitlines()
        assert [h for h in HARDENING if h not in lines] == [], name
        assert "ProtectSystem=strict" in lines and "SystemCallFilter=@system-service" in lines
        assert directives(text, "ProtectHome") == (["tmpfs"] if home_paths(BIN_DIR) else ["yes"])
        assert directives(text, "BindReadOnlyPaths") == [str(p) for p in home_paths(BIN_DIR)]
        assert directives(text, "User") == ["postwarden"] and directives(text, "Group") == ["postwarden"]
        assert directives(text, "Restart") == ["on-failure"] and directives(text, "RestartSec") == ["5"]
        assert directives(text, "ReadWritePaths") == [data], name
        assert (
            directives(text, "Environment")[0] == f"POSTWARDEN_CONFIG={tmp_path / 'etc' / 'postwarden.toml'}"
        )
        assert directives(text, "After") == ["network-online.target"]
        capable = name in ("postwarden-smtp.service", "postwarden-imap.service")
        assert directives(text, "CapabilityBoundingSet") == (["CAP_NET_BIND_SERVICE"] if capable else [""])
        assert directives(text, "AmbientCapabilities") == (["CAP_NET_BIND_SERVICE"] if capable else [])


def test_what_the_processes_read_under_a_home_directory_stays_readable(tmp_path: Path) -> None:
    """ProtectHome=yes would hide a venv or a Python (pyenv) under /root or /home: the processes could
    not start. Such paths are mounted back read-only over an empty home."""
    source = ROOT.resolve()
    source_in_home = [source] if any(source.is_relative_to(home) for home in HOME_DIRECTORIES) else []
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to("/usr/bin/python3")
    assert home_paths(bin_dir) == source_in_home
    (bin_dir / "python").unlink()
    (bin_dir / "python").symlink_to("/root/.pyenv/versions/3.11.7/bin/python3.11")
    assert home_paths(bin_dir) == sorted([Path("/root/.pyenv/versions/3.11.7"), *source_in_home])
    home_venv = Path("/home/someone/postwarden/.venv/bin")
    assert Path("/home/someone/postwarden/.venv") in home_paths(home_venv)


def test_security_exposure_is_low(tmp_path: Path) -> None:
    units(tmp_path)
    for path in sorted((tmp_path / "units").glob("*.service")):
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", f"--threshold={MOST_EXPOSURE}", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{path.name}: {result.stdout[-300:]}{result.stderr}"
        assert "Overall exposure level" in result.stdout


def test_stop_timeouts_fit_the_graceful_stops(tmp_path: Path) -> None:
    """smtp and the worker stop their children themselves (systemd signals only them); the worker
    ends itself before systemd's SIGKILL."""
    files = units(tmp_path)
    smtp, worker = files["postwarden-smtp.service"], files["postwarden-worker.service"]
    assert directives(smtp, "KillMode") == ["mixed"] and directives(worker, "KillMode") == ["mixed"]
    assert directives(smtp, "TimeoutStopSec") == ["50"]  # workers 30 s, then the task publisher 10 s
    (grace,) = [e for e in directives(worker, "Environment") if e.startswith("POSTWARDEN_WORKER_STOP_GRACE=")]
    assert int(grace.split("=")[1]) < int(directives(worker, "TimeoutStopSec")[0])
    assert directives(files["postwarden-web.service"], "KillMode") == []


def test_postgresql_redis_and_a_privileged_web_port(tmp_path: Path) -> None:
    files = units(
        tmp_path,
        '\n[web]\naddress = "0.0.0.0"\nport = 443\n',
        database_url=POSTGRES,
        broker_url="redis://127.0.0.1:6379/0",
    )
    for name, text in files.items():
        if name.endswith(".service"):
            assert directives(text, "After") == [
                "network-online.target postgresql.service redis-server.service"
            ]
    web, flower = files["postwarden-web.service"], files["postwarden-flower.service"]
    assert directives(web, "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    # On Redis, flower writes nothing: no ReadWritePaths, the whole system read-only.
    assert directives(flower, "ReadWritePaths") == [] and directives(web, "ReadWritePaths") != []
    assert verify_problems(sorted((tmp_path / "units").iterdir())) == ""


def test_a_sqlite_database_outside_the_data_directory_is_writable(tmp_path: Path) -> None:
    elsewhere = tmp_path / "db"
    files = units(tmp_path, database_url=f"sqlite:///{elsewhere / 'postwarden.db'}")
    data = str((tmp_path / "etc" / "data").resolve())
    assert directives(files["postwarden-smtp.service"], "ReadWritePaths") == [data, str(elsewhere)]


def test_chosen_processes_only(tmp_path: Path) -> None:
    output = tmp_path / "units"
    code, _ = generate(write_config(tmp_path / "etc"), output, "--process", "smtp", "--process", "imap")
    assert code == 0
    assert sorted(p.name for p in output.iterdir()) == [
        "postwarden-imap.service",
        "postwarden-smtp.service",
        "postwarden.target",
    ]
    assert directives((output / "postwarden.target").read_text(), "Wants") == [
        "postwarden-smtp.service postwarden-imap.service"
    ]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--process", "smtpd"], "no process named smtpd"),
        (["--user", "Root Admin"], "user 'Root Admin' is not a system user"),
        (["--bin-dir", "/opt/my venv/bin"], "must be an absolute path"),
        (["--bin-dir", "/opt/%h/bin"], "must be an absolute path"),
        (["--bin-dir", "/nowhere"], "/nowhere/celery does not exist (--bin-dir"),
    ],
)
def test_what_systemd_would_misread_is_refused(tmp_path: Path, args: list[str], said: str) -> None:
    output = tmp_path / "units"
    code, out = generate(write_config(tmp_path / "etc"), output, *args)
    assert code == 2 and said in out
    assert not output.exists()
