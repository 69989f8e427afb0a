"""The Authentication-Results header field (RFC 8601), read back with a parser we did not write."""

from __future__ import annotations

import authres

from app.auth.authresults import LINE_LIMIT, authentication_results, value
from app.auth.dmarc import parse_record
from app.auth.types import DKIMResult, DMARCResult, SPFResult

SPF_PASS = SPFResult("pass", "example.com", "mfrom", reason="matched ip4 at example.com")
HELO_LITERAL = SPFResult("none", "[192.0.2.1]", "helo", reason="HELO is an address literal")


def parse(header: str) -> authres.AuthenticationResultsHeader:
    assert header.startswith("Authentication-Results: ") and header.endswith("\r\n")
    return authres.AuthenticationResultsHeader.parse(header.rstrip("\r\n").replace("\r\n", "\n"))


def results(parsed: authres.AuthenticationResultsHeader) -> list[tuple[str, str, str | None, dict[str, str]]]:
    return [
        (r.method, r.result, r.reason, {f"{p.type}.{p.name}": p.value for p in r.properties})
        for r in parsed.results
    ]


def test_header_round_trips_through_a_peer_parser() -> None:
    record = parse_record("v=DMARC1; p=reject; t=y")
    header = authentication_results(
        "mx.example.org",
        spf_mailfrom=SPF_PASS,
        spf_helo=HELO_LITERAL,
        dkim=[
            DKIMResult("pass", "example.com", "sel", "rsa-sha256"),
            DKIMResult("fail", "example.net", "ed1", "ed25519-sha256", reason="body hash mismatch"),
        ],
        dmarc=DMARCResult(
            "fail",
            "example.com",
            "example.com",
            record=record,
            disposition="quarantine",
            testing=True,
            reason="no aligned identifier; p=reject (testing)",
        ),
    )
    parsed = parse(header)
    assert parsed.authserv_id == "mx.example.org"
    assert results(parsed) == [
        ("spf", "pass", None, {"smtp.mailfrom": "example.com"}),
        ("spf", "none", "HELO is an address literal", {"smtp.helo": "[192.0.2.1]"}),
        ("dkim", "pass", None, {"header.d": "example.com", "header.s": "sel", "header.a": "rsa-sha256"}),
        (
            "dkim",
            "fail",
            "body hash mismatch",
            {"header.d": "example.net", "header.s": "ed1", "header.a": "ed25519-sha256"},
        ),
        ("dmarc", "fail", "no aligned identifier; p=reject (testing)", {"header.from": "example.com"}),
    ]
    assert "(p=reject dis=quarantine testing)" in header


def test_no_signature_is_dkim_none_and_no_from_domain_omits_header_from() -> None:
    header = authentication_results(
        "mx.example.org",
        spf_mailfrom=SPF_PASS,
        spf_helo=SPF_PASS,
        dkim=[],
        dmarc=DMARCResult("permerror", "", reason="no single author domain in the From header field"),
    )
    parsed = results(parse(header))
    assert parsed[2] == ("dkim", "none", None, {})
    assert parsed[3] == ("dmarc", "permerror", "no single author domain in the From header field", {})


def test_folding_keeps_lines_short_and_values_printable() -> None:
    long_domain = "a-rather-long-signing-domain.example.com"
    long_reason = DKIMResult("temperror", long_domain, "selector2026", "rsa-sha256", "timeout: " + "x" * 300)
    injection = DKIMResult("fail", "example.com", "s", "rsa-sha256", "bad\r\nX-Injected: yes \u00e9")
    header = authentication_results(
        "mx.example.org",
        spf_mailfrom=SPF_PASS,
        spf_helo=SPF_PASS,
        dkim=[long_reason, long_reason, injection],
        dmarc=DMARCResult("none", "example.com"),
    )
    lines = header.split("\r\n")[:-1]
    assert all(line.isascii() and line.replace("\t", " ").isprintable() for line in lines)
    assert all(line[0] in " \t" for line in lines[1:])  # every continuation is folded whitespace
    assert all(len(line) <= LINE_LIMIT for line in lines if "reason=" not in line)
    assert all(len(line) <= 998 for line in lines)
    parsed = results(parse(header))
    assert parsed[2][1] == "temperror" and parsed[2][2] is not None and parsed[2][2].endswith("...")
    assert parsed[4][2] == "bad?X-Injected: yes ?"
    assert not any(line.startswith("X-Injected") for line in lines)


def test_values_are_quoted_when_not_tokens() -> None:
    assert value("example.com") == "example.com"
    assert value("[192.0.2.1]") == '"[192.0.2.1]"'
    assert value('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    assert value("") == '""'
