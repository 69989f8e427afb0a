"""`postwarden reports import|list|show` over the RFC samples: stored once, refusals with their reason and
exit 1, reporter text escaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.cli import reports as reports_cli
from app.inreports.errors import TLS_UNPARSABLE
from app.inreports.unpack import MAX_MESSAGE
from tests.cli.test_cli_inspect import run
from tests.inreports.samples import RFC8460_EXAMPLE, RFC9990_REPORT, gzipped


def files(tmp_path: Path, **contents: bytes) -> list[str]:
    paths = []
    for name, data in contents.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def imported(config_file: Path, *paths: str) -> list[dict[str, Any]]:
    result = run(config_file, "reports", "import", "--json", *paths)
    assert result.exit_code == 0, result.output
    outcomes: list[dict[str, Any]] = json.loads(result.output)
    return outcomes


def test_import_stores_each_report_once(config_file: Path, tmp_path: Path) -> None:
    paths = files(tmp_path, tls_json=RFC8460_EXAMPLE, dmarc_xml_gz=gzipped(RFC9990_REPORT))
    first = imported(config_file, *paths)
    assert [(o["result"], o["kind"]) for o in first] == [("stored", "tls"), ("stored", "dmarc")]
    assert (first[0]["domain"], first[0]["records"], first[0]["messages"]) == ("company-y.example", 1, 5629)
    again = run(config_file, "reports", "import", *paths)
    assert again.exit_code == 0, again.output
    lines = again.output.splitlines()
    assert lines[0].startswith(f"{paths[0]}: already stored: tls #{first[0]['id']} from sts-reporting@")
    assert "report id 5065427c-23d3-47ca-b6e0-946ea0e8c4be, 1 policies, 5629 sessions" in lines[0]
    assert "already stored: dmarc" in lines[1]
    listed = json.loads(run(config_file, "reports", "list", "--json").output)
    assert sorted(row["kind"] for row in listed) == ["dmarc", "tls"]


def test_a_refused_file_gives_its_reason_and_exit_1(config_file: Path, tmp_path: Path) -> None:
    paths = files(tmp_path, good=RFC8460_EXAMPLE, bad=b'{"organization-name": 1}')
    result = run(config_file, "reports", "import", *paths)
    assert result.exit_code == 1
    good, bad = result.output.splitlines()
    assert "stored: tls" in good
    assert bad.startswith(f"{paths[1]}: refused: {TLS_UNPARSABLE} (")


def test_hostile_reporter_text_is_escaped(config_file: Path, tmp_path: Path) -> None:
    hostile = RFC8460_EXAMPLE.replace(b'"Company-X"', b'"Evil\\u001b[31m\\r\\nstored: fake"')
    hostile = hostile.replace(b"sts-reporting@company-x.example", b"x\\u001b]0;t\\u0007@e.example")
    [path] = files(tmp_path, hostile=hostile)
    outputs = [run(config_file, "reports", "import", path).output]
    outputs.append(run(config_file, "reports", "list").output)
    outputs.append(run(config_file, "reports", "show", "tls", "1").output)
    for output in outputs:
        assert "\x1b" not in output and "\r" not in output and "\x07" not in output
    assert "\\x1b" in outputs[1]
    assert not any(line.startswith("stored: fake") for line in outputs[2].splitlines())


def test_list_and_show(config_file: Path, tmp_path: Path) -> None:
    tls_outcome, dmarc_outcome = imported(config_file, *files(tmp_path, t=RFC8460_EXAMPLE, d=RFC9990_REPORT))
    result = run(config_file, "reports", "list", "--kind", "tls", "--domain", "company-y.example")
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["KIND", "ID", "BEGIN"]
    assert lines[1].split()[:5] == ["tls", str(tls_outcome["id"]), "2016-04-01", "00:00", "company-y.example"]
    assert lines[-1] == "1 report(s)"
    shown = run(config_file, "reports", "show", "dmarc", str(dmarc_outcome["id"]), "--json")
    detail = json.loads(shown.output)
    assert detail["domain"] == dmarc_outcome["domain"]
    assert len(detail["records"]) == dmarc_outcome["records"]
    text = run(config_file, "reports", "show", "tls", str(tls_outcome["id"])).output
    assert "reporter: sts-reporting@company-x.example" in text
    assert "    failure result_type=validation-failure" in text
    missing = run(config_file, "reports", "show", "tls", "999")
    assert missing.exit_code == 1 and "no tls report 999" in missing.output


def test_a_file_past_the_largest_message_is_refused_after_reading_one_byte_more(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [path] = files(tmp_path, huge=b"x" * (MAX_MESSAGE + 4096))
    sizes: list[int] = []
    read_file = reports_cli.read_file
    monkeypatch.setattr(reports_cli, "read_file", lambda data: sizes.append(len(data)) or read_file(data))
    result = run(config_file, "reports", "import", "--json", path)
    assert result.exit_code == 1
    assert json.loads(result.output)[0]["detail"] == "message too large"
    assert sizes == [MAX_MESSAGE + 1]
