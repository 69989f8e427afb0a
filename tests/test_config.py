"""Configuration: the example documents every option and loads; each class of error names file and key."""

from __future__ import annotations

import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import CliRunner
from pydantic import BaseModel

from app.auth.dkimkeys import generate_private_key_pem
from app.cli import main
from app.config import Config, ConfigError, load_config
from tests.support.configs import write_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "postwarden.example.toml"
TLS_DIR = "/etc/letsencrypt/live/mail.example.org"
DATA_DIR = "/var/lib/postwarden"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def install_example(directory: Path) -> Path:
    """The example with its absolute paths moved under `directory`, and the files it names created."""
    config_dir, tls_dir = directory / "config", directory / "tls"
    text = EXAMPLE.read_text()
    for placeholder, path in (
        (TLS_DIR, tls_dir),
        (DATA_DIR, directory / "data"),
        (CA_BUNDLE, tls_dir / "ca.pem"),
    ):
        assert placeholder in text
        text = text.replace(placeholder, str(path))
    config_dir.mkdir()
    tls_dir.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
    cert = ca.issue_cert("mail.example.org")
    cert.cert_chain_pems[0].write_to_path(str(tls_dir / "fullchain.pem"))
    cert.private_key_pem.write_to_path(str(tls_dir / "privkey.pem"))
    raw = tomllib.loads(text)
    for domain in raw["domains"].values():
        for selector in domain.get("dkim", []):
            key_file = config_dir / selector["private_key_file"]
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_bytes(generate_private_key_pem(selector["algorithm"]))
    (config_dir / raw["web"]["secret_key_file"]).write_text("example-secret-" * 4)
    path = config_dir / "postwarden.toml"
    path.write_text(text)
    return path


def option_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every option of a config model, as dotted paths; tables in dicts/lists appear once, as `[]`."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        nested = _nested_model(field.annotation)
        if nested is not None:
            model_type, container = nested
            paths |= option_paths(model_type, f"{path}{'[]' if container else ''}.")
    return paths


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model inside `X`, `X | None`, `list[X]` or `dict[str, X]`, and whether it is in a container."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (typing.Union, types.UnionType):
        inner = [_nested_model(a) for a in typing.get_args(annotation) if a is not type(None)]
        return inner[0] if inner and inner[0] else None
    if origin in (list, dict):
        inner_model = _nested_model(typing.get_args(annotation)[-1])
        return (inner_model[0], True) if inner_model else None
    return None


def present_paths(value: Any, model: type[BaseModel], prefix: str = "") -> set[str]:
    """The option paths a TOML table sets (all entries of dicts/lists of tables taken together)."""
    paths: set[str] = set()
    for name, item in value.items():
        path = f"{prefix}{name}"
        paths.add(path)
        field = model.model_fields.get(name)
        nested = _nested_model(field.annotation) if field else None
        if nested is None:
            continue
        model_type, container = nested
        if not container:
            paths |= present_paths(item, model_type, f"{path}.")
            continue
        entries = item.values() if isinstance(item, dict) else item
        for entry in entries:
            paths |= present_paths(entry, model_type, f"{path}[].")
    return paths


def test_example_documents_every_option() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    undocumented = option_paths(Config) - present_paths(raw, Config)
    assert not undocumented, f"options missing from {EXAMPLE.name}: {sorted(undocumented)}"


def test_example_loads(tmp_path: Path) -> None:
    config = load_config(install_example(tmp_path))
    assert config.hostname == "mail.example.org"
    assert config.data_dir == tmp_path / "data"
    # Relative paths are relative to the config file's directory.
    assert (
        config.domains["example.org"].dkim[0].private_key_file
        == tmp_path / "config/dkim/example.org/ed2025.pem"
    )
    assert config.web.secret_key_file == tmp_path / "config/web-secret.key"
    assert config.account_for_address("dmarc-reports@example.org") == ("admin", "DMARC")
    assert config.account_for_address("tls-reports@mail.example.org") == ("admin", "TLSRPT")
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "config/postwarden.toml"), "check-config"])
    assert result.exit_code == 0, result.output


def test_environment_overrides_urls(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTWARDEN_DATABASE_URL", "postgresql+psycopg://postwarden@127.0.0.1/pw")
    monkeypatch.setenv("POSTWARDEN_BROKER_URL", "redis://127.0.0.1:6379/3")
    config = load_config(config_file)
    assert config.resolved_database_url == "postgresql+psycopg://postwarden@127.0.0.1/pw"
    assert config.resolved_broker_url == "redis://127.0.0.1:6379/3"


# Errors: each class, the exact message (file and key named).


def base_text(tmp_path: Path) -> str:
    return write_config(tmp_path / "base").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def expect_error(path: Path, *messages: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == "\n".join(f"{path}: {m}" for m in messages)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('hostname = "mail.example.org"\n', ""), "key 'hostname' is required but missing"),
        (
            ('[postmaster]\naccount = "admin"\n', "[postmaster]\n"),
            "key 'postmaster.account' is required but missing",
        ),
        (('localpart = "tlsrpt"\n', ""), "key 'host_tlsrpt.localpart' is required but missing"),
    ],
)
def test_missing_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = base_text(tmp_path)
    assert edit[0] in text
    expect_error(write(tmp_path, text.replace(edit[0], edit[1], 1)), message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[limits]\nmax_recipients = "ten"\n',
            "key 'limits.max_recipients': Input should be a valid integer (got 'ten')",
        ),
        (
            '[[listeners]]\nkind = "inbound"\nport = 99999\n',
            "key 'listeners[0].port': Input should be less than or equal to 65535 (got 99999)",
        ),
        (
            '[[listeners]]\nkind = "relay"\nport = 25\n',
            "key 'listeners[0].kind': Input should be 'inbound', 'submission', 'imap' or 'imaps' "
            "(got 'relay')",
        ),
        (
            '[domains."example.net"]\ndmarc_reports = 5\n',
            "key 'domains.\"example.net\".dmarc_reports': Input should be a valid dictionary or instance of "
            "MailboxTarget (got 5)",
        ),
        (
            "[web]\naddress = 127\n",
            "key 'web.address': Input should be a valid string (got 127)",
        ),
        # Strict: numbers in strings and numbers for booleans are refused, not converted.
        (
            '[web]\nport = "8080"\n',
            "key 'web.port': Input should be a valid integer (got '8080')",
        ),
        (
            '[[accounts.admin.rulesets]]\nmailbox = "Inbox"\nis_forward = 1\n',
            "key 'accounts.admin.rulesets[0].is_forward': Input should be a valid boolean (got 1)",
        ),
    ],
)
def test_wrong_type(tmp_path: Path, extra: str, message: str) -> None:
    expect_error(write(tmp_path, base_text(tmp_path) + "\n" + extra), message)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[web]\nprot = 8080\n", "web.prot"),
        ('[domains."example.net"]\ndkim_selector = "x"\n', 'domains."example.net".dkim_selector'),
        ('[[accounts.admin.rulesets]]\nmailbox = "x"\nfoward = true\n', "accounts.admin.rulesets[0].foward"),
    ],
)
def test_unknown_key(tmp_path: Path, extra: str, key: str) -> None:
    expect_error(
        write(tmp_path, base_text(tmp_path) + "\n" + extra),
        f"key {key!r} is not a known option (check its spelling; see config/postwarden.example.toml)",
    )


def test_unknown_top_level_key(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, 'hostnme = "x"\n' + base_text(tmp_path)),
        "key 'hostnme' is not a known option (check its spelling; see config/postwarden.example.toml)",
    )


LISTENER = '[[listeners]]\nkind = "inbound"\nport = 25\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
DKIM = '[[domains."example.org".dkim]]\nselector = "s1"\nalgorithm = "{alg}"\nprivate_key_file = "{file}"\n'


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A certificate with its key, another certificate's key, DKIM keys and a junk file, in tmp_path."""
    ca = trustme.CA()
    cert, other = ca.issue_cert("mail.example.org"), ca.issue_cert("other.example.org")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    (tmp_path / "ed.pem").write_bytes(generate_private_key_pem("ed25519"))
    (tmp_path / "junk.pem").write_text("junk\n")
    (tmp_path / "adir").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("extra", "messages"),
    [
        (
            LISTENER.format(cert="nope.pem", key="key.pem"),
            ["key 'listeners[0].tls_cert': file '{d}/nope.pem' does not exist"],
        ),
        (
            LISTENER.format(cert="nope.pem", key="nokey.pem"),
            [
                "key 'listeners[0].tls_cert': file '{d}/nope.pem' does not exist",
                "key 'listeners[0].tls_key': file '{d}/nokey.pem' does not exist",
            ],
        ),
        (
            LISTENER.format(cert="adir", key="key.pem"),
            ["key 'listeners[0].tls_cert': '{d}/adir' is not a file"],
        ),
        (
            LISTENER.format(cert="junk.pem", key="key.pem"),
            ["key 'listeners[0].tls_cert': '{d}/junk.pem' is not a PEM certificate (chain)"],
        ),
        (
            LISTENER.format(cert="cert.pem", key="junk.pem"),
            ["key 'listeners[0].tls_key': '{d}/junk.pem' is not an unencrypted PEM private key"],
        ),
        (
            LISTENER.format(cert="cert.pem", key="other-key.pem"),
            [
                "key 'listeners[0].tls_key': '{d}/other-key.pem' is not the private key of tls_cert "
                "'{d}/cert.pem' (KEY_VALUES_MISMATCH)"
            ],
        ),
        (
            '[[listeners]]\nkind = "inbound"\nport = 25\ntls_cert = "cert.pem"\n',
            ["key 'listeners[0]': tls_cert and tls_key must be given together"],
        ),
        (
            DKIM.format(alg="ed25519", file="dkim/s1.pem"),
            ["key 'domains.\"example.org\".dkim[0].private_key_file': file '{d}/dkim/s1.pem' does not exist"],
        ),
        (
            DKIM.format(alg="rsa", file="ed.pem"),
            [
                "key 'domains.\"example.org\".dkim[0].private_key_file': '{d}/ed.pem': "
                "the key is an ed25519 key, not rsa as configured"
            ],
        ),
        (
            DKIM.format(alg="ed25519", file="junk.pem"),
            [
                "key 'domains.\"example.org\".dkim[0].private_key_file': '{d}/junk.pem': "
                "not an unencrypted PEM private key"
            ],
        ),
    ],
)
def test_bad_file(files: Path, extra: str, messages: list[str]) -> None:
    """Paths are relative to the config file's directory; each problem found is reported."""
    path = write(files, base_text(files) + "\n" + extra)
    expect_error(path, *(m.format(d=files) for m in messages))


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, base_text(tmp_path) + "\n[web\nport = 1\n")
    line = base_text(tmp_path).count("\n") + 2
    expect_error(
        path, f"not valid TOML: Expected ']' at the end of a table declaration (at line {line}, column 5)"
    )


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    expect_error(
        tmp_path / "nope.toml",
        "configuration file not found (create one with `postwarden quickstart you@example.org`)",
    )
    binary = write(tmp_path, "")
    binary.write_bytes(b"\xff\xfe")
    expect_error(
        binary, "cannot read: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    )


@pytest.mark.parametrize(
    ("extra", "key", "account"),
    [
        (
            '[domains."example.org".dmarc_reports]\naccount = "bob"\nlocalpart = "d"\nmailbox = "D"\n',
            'domains."example.org".dmarc_reports.account',
            "bob",
        ),
        (
            '[domains."example.net"]\ntls_reports = { account = "eve", localpart = "t", mailbox = "T" }\n',
            'domains."example.net".tls_reports.account',
            "eve",
        ),
    ],
)
def test_unknown_account_referenced(tmp_path: Path, extra: str, key: str, account: str) -> None:
    expect_error(
        write(tmp_path, base_text(tmp_path) + "\n" + extra),
        f"key {key!r}: account {account!r} is not in [accounts] (configured: admin)",
    )


@pytest.mark.parametrize("section", ["postmaster", "host_tlsrpt"])
def test_unknown_account_in_postmaster_and_host_tlsrpt(tmp_path: Path, section: str) -> None:
    text = base_text(tmp_path).replace(f'[{section}]\naccount = "admin"', f'[{section}]\naccount = "root"')
    expect_error(
        write(tmp_path, text),
        f"key '{section}.account': account 'root' is not in [accounts] (configured: admin)",
    )


def test_address_in_unconfigured_domain(tmp_path: Path) -> None:
    text = base_text(tmp_path).replace('"info@example.org"', '"info@Example.NET"')
    expect_error(
        write(tmp_path, text),
        "key 'accounts.admin.addresses': 'info@example.net' is in domain 'example.net', which is not in "
        '[domains] (add [domains."example.net"])',
    )


def test_malformed_address(tmp_path: Path) -> None:
    text = base_text(tmp_path).replace('"info@example.org"', '"info.example.org"')
    expect_error(
        write(tmp_path, text),
        "key 'accounts.admin.addresses': 'info.example.org' is not an address of the form localpart@domain",
    )


# The same errors through the CLI: exit 2, the message on stderr, no traceback.


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[web]\nprot = 8080\n", "key 'web.prot' is not a known option"),
        ("[limits]\nmax_errors = 0\n", "key 'limits.max_errors': Input should be greater than 0 (got 0)"),
        (LISTENER.format(cert="nope.pem", key="key.pem"), "key 'listeners[0].tls_cert': file "),
        ("[web\n", "not valid TOML: "),
    ],
)
def test_check_config_cli_reports_errors(tmp_path: Path, extra: str, message: str) -> None:
    path = write(tmp_path, base_text(tmp_path) + "\n" + extra)
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"postwarden: {path}: {message}")
    assert "Traceback" not in result.stderr


def test_check_config_cli_ok(config_file: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(config_file), "check-config"])
    assert result.exit_code == 0
    assert result.stdout == "configuration ok: host mail.example.org, 1 domain(s), 1 account(s)\n"


def test_check_config_cli_takes_the_environment(config_file: Path) -> None:
    result = CliRunner().invoke(main, ["check-config"], env={"POSTWARDEN_CONFIG": str(config_file)})
    assert result.exit_code == 0, result.output
