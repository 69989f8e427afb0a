"""`postwarden check-config` finds what makes a process exit at start (two listeners on one address
and port, an unreadable or short web secret), prints JSON with --json; CLI ids and limits out of
the 64-bit range get a clear usage error, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from tests.support.configs import write_config

INBOUND = '\n[[listeners]]\nkind = "inbound"\naddress = "{address}"\nport = {port}\n'


def check(path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--config", str(path), "check-config", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("first", "second", "port"),
    [("127.0.0.1", "127.0.0.1", 2525), ("0.0.0.0", "127.0.0.1", 2525), ("::", "127.0.0.1", 2525)],
)
def test_two_listeners_on_one_port(tmp_path: Path, first: str, second: str, port: int) -> None:
    extra = INBOUND.format(address=first, port=port) + INBOUND.format(address=second, port=port)
    code, out, err = check(write_config(tmp_path, extra))
    assert code == 2 and out == ""
    assert f"keys 'listeners[0]' and 'listeners[1]' both listen on port {port}" in err


def test_listeners_on_distinct_addresses_or_families_are_fine(tmp_path: Path) -> None:
    extra = (
        INBOUND.format(address="127.0.0.1", port=2525)
        + INBOUND.format(address="127.0.0.2", port=2525)
        + INBOUND.format(address="0.0.0.0", port=2526)
        + INBOUND.format(address="::1", port=2526)
        + INBOUND.format(address="127.0.0.1", port=0)
        + INBOUND.format(address="127.0.0.1", port=0)
    )
    assert check(write_config(tmp_path, extra))[0] == 0


def test_a_listener_on_the_web_port(tmp_path: Path) -> None:
    code, _, err = check(write_config(tmp_path, INBOUND.format(address="127.0.0.1", port=8080)))
    assert code == 2 and "keys 'listeners[0]' and 'web' both listen on port 8080" in err


def test_missing_and_short_web_secret(tmp_path: Path) -> None:
    path = write_config(tmp_path, '\n[web]\nsecret_key_file = "web-secret.key"\n')
    code, out, err = check(path)
    assert code == 2 and out == ""
    assert err.startswith(f"postwarden: {path}: web.secret_key_file ")
    assert "cannot be read" in err and "No such file" in err
    (tmp_path / "web-secret.key").write_text("short\n")
    code, _, err = check(path)
    assert code == 2 and "holds 5 characters; use at least 16" in err
    (tmp_path / "web-secret.key").write_text("a-long-enough-random-secret\n")
    assert check(path)[0] == 0


def test_json_output(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good")
    code, out, _ = check(good, "--json")
    assert code == 0
    assert json.loads(out) == {
        "ok": True,
        "config": str(good),
        "problems": [],
        "summary": {"hostname": "mail.example.org", "domains": 1, "accounts": 1},
    }
    bad = write_config(tmp_path / "bad", "\n[web]\nprot = 1\n" + INBOUND.format(address="::", port=25))
    code, out, err = check(bad, "--json")
    report = json.loads(out)
    assert code == 2 and err == ""
    assert report["ok"] is False and report["summary"] is None
    assert report["problems"] == [
        f"{bad}: key 'web.prot' is not a known option (check its spelling; "
        "see config/postwarden.example.toml)"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["queue", "retry", str(2**64)],
        ["queue", "drop", str(2**63)],
        ["queue", "retry", "0"],
        ["message", "list", "admin", "INBOX", "--limit", str(2**63)],
    ],
)
def test_out_of_range_ids_and_limits_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, ["--config", str(write_config(tmp_path)), *args])
    assert result.exit_code == 2
    assert "is not in the range 1<=x<=9223372036854775807" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_database_broker_and_data_dir_a_process_could_not_use(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    path = write_config(tmp_path / "config", database_url="postgres://db.invalid/x", broker_url="bogus://")
    inside_a_file = tmp_path / "a-file" / "data"
    path.write_text(path.read_text().replace('data_dir = "data"', f'data_dir = "{inside_a_file}"'))
    code, out, err = check(path, "--json")
    problems = json.loads(out)["problems"]
    assert code == 2 and err == ""
    assert problems == [
        f"{path}: database_url: Can't load plugin: sqlalchemy.dialects:postgres",
        f"{path}: broker_url: no broker transport 'bogus' ('No such transport: bogus')",
        f"{path}: data_dir: {str(tmp_path / 'a-file')!r} is not a directory",
    ]


def test_a_metrics_dir_a_process_could_not_use(tmp_path: Path) -> None:
    """A metrics_dir set apart from data_dir is checked too: every process writes its counts there."""
    (tmp_path / "a-file").write_text("")
    path = write_config(tmp_path / "config")
    path.write_text(
        path.read_text().replace(
            'data_dir = "data"', f'data_dir = "data"\nmetrics_dir = "{tmp_path / "a-file" / "m"}"'
        )
    )
    code, _, err = check(path)
    assert code == 2
    assert err == f"postwarden: {path}: metrics_dir: {str(tmp_path / 'a-file')!r} is not a directory\n"
    path.write_text(
        path.read_text().replace(str(tmp_path / "a-file" / "m"), str(tmp_path / "metrics" / "web"))
    )
    assert check(path)[0] == 0
