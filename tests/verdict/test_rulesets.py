"""Rulesets and the junk verdict (SPEC R3.1, R3.4, R3.5) at the analysis level: matching, the ruleset
options, what a conclusive history, a first SPF failure or a report does, and configuration errors.
The history is built in a real SQLite store (no sockets, no DNS)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.accounts import ensure_account
from app.auth.types import SPFResult
from app.config import Config, ConfigError, load_config
from app.db import session_scope
from app.migrate import upgrade_database
from app.store.mailboxes import add_messages, ensure_mailbox, new_message_row
from app.store.signals import add_signals
from app.verdict.analysis import analyze, message_columns
from app.verdict.dmarc import DMARC_REJECT_REPLY
from app.verdict.reports import ReportCheck
from app.verdict.reputation import JUNK_REJECT_REPLY
from app.verdict.rulesets import decoded, matching_ruleset
from app.verdict.types import Arrival, Recipient
from tests.support.configs import write_config
from tests.verdict.test_analysis import outcome

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
ACCOUNTS = """
[accounts.bob]
addresses = ["bob@example.org"]

[[accounts.bob.rulesets]]
mailbox = "Lists"
smtp_mail_from_regexp = "@lists\\\\.example$"
header_regexps = { "List-Id" = "<dev\\\\.lists\\\\.example>", Subject = "^\\\\[dev\\\\]" }
mailing_list_domain = "lists.example"

[[accounts.bob.rulesets]]
mailbox = "Forwarded"
header_regexps = { "x-forwarded-for" = "bob@old\\\\.example" }
is_forward = true

[[accounts.bob.rulesets]]
mailbox = "Inbox"
header_regexps = { subject = "rescue me" }
accept_rejects_to_mailbox = "Maybe"
"""
BOB = Recipient("bob@example.org", "bob", "Inbox")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, ACCOUNTS))


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'verdict.db'}"
    upgrade_database(url)
    with session_scope(url) as session:
        yield session


def arrival(
    headers: dict[str, str] | None = None, mail_from: str = "bounce@sender.example", **auth: object
) -> Arrival:
    fields = tuple((headers or {}).items())
    return Arrival(
        replace(outcome(), **auth),  # type: ignore[arg-type]
        "192.0.2.7",
        "client.sender.example",
        mail_from,
        (BOB,),
        "tx1",
        fields,
    )


def flag(session: Session, sample: Arrival, mailbox: str, junk: bool, count: int = 1) -> None:
    """Earlier messages like `sample` delivered to bob's `mailbox` and flagged by him."""
    account_id = ensure_account(session, "bob").id
    box = ensure_mailbox(session, account_id, mailbox)
    for n in range(count):
        row = new_message_row(
            message_columns(sample) | {"junk": junk, "notjunk": not junk},
            account_id=account_id,
            mailbox_id=box,
            destined_mailbox_id=None,
            path=f"messages/20261201/{mailbox}{n}",
            size=1,
        ) | {"received": NOW - timedelta(days=1 + n)}
        (row_id,) = add_messages(session, [row])
        add_signals(session, [(row_id, row, False)])
    session.flush()


# Matching.


LIST_MAIL = {"List-Id": "Dev list <dev.lists.example>", "Subject": "[dev] release"}


def test_a_ruleset_needs_its_mail_from_and_every_header(config: Config) -> None:
    rulesets = config.accounts["bob"].rulesets
    assert matching_ruleset(rulesets, arrival(LIST_MAIL, "owner@lists.example")) is rulesets[0]
    assert matching_ruleset(rulesets, arrival(LIST_MAIL, "owner@other.example")) is None
    one_header = {"List-Id": LIST_MAIL["List-Id"], "Subject": "release"}
    assert matching_ruleset(rulesets, arrival(one_header, "owner@lists.example")) is None


def test_header_names_are_case_insensitive_and_values_decoded(config: Config) -> None:
    rulesets = config.accounts["bob"].rulesets
    forwarded = {"X-FORWARDED-FOR": "bob@old.example"}
    assert matching_ruleset(rulesets, arrival(forwarded)) is rulesets[1]
    assert matching_ruleset(rulesets, arrival({"SUBJECT": "=?utf-8?q?please_rescue_me?="})) is rulesets[2]


def test_the_searched_text_is_capped() -> None:
    assert len(decoded("x" * 100_000)) == 4096
    assert decoded("=?bogus-charset?q?x?=") == "=?bogus-charset?q?x?="


# Options.


def test_a_verified_mailing_list_is_accepted_without_reputation(config: Config, session: Session) -> None:
    mail = arrival(LIST_MAIL, "owner@lists.example", spf_mailfrom=SPFResult("pass", "lists.example", "mfrom"))
    flag(session, mail, "Lists", junk=True, count=3)  # the list's history is not asked
    analysis = analyze(config, mail, session, NOW)
    assert (analysis.action, analysis.verdict.reason, [c.mailbox for c in analysis.copies]) == (
        "accept",
        "ruleset",
        ["Lists"],
    )
    assert "X-Postwarden-Reason: ruleset\r\n" in analysis.headers
    assert analysis.verdict.dmarc_override is None, "DMARC passed: nothing overridden"
    # The author's DMARC fails (the list rewrote the message): the list is still accepted.
    rewritten = replace(mail, outcome=replace(mail.outcome, dmarc=outcome("fail", "reject").dmarc))
    analysis = analyze(config, rewritten, session, NOW)
    assert (analysis.action, analysis.verdict.dmarc_override) == ("accept", "mailing_list")


def test_an_unverified_mailing_list_goes_through_reputation(config: Config, session: Session) -> None:
    mail = arrival(LIST_MAIL, "owner@lists.example")  # SPF passes for sender.example only
    flag(session, mail, "Lists", junk=True, count=3)
    analysis = analyze(config, mail, session, NOW)
    assert (analysis.action, analysis.verdict.reason, analysis.reply) == (
        "reject",
        "msgfromfull",
        JUNK_REJECT_REPLY,
    )
    assert [(c.mailbox, c.destined_mailbox) for c in analysis.copies] == [("Rejects", "Lists")]


def test_a_forward_skips_the_dmarc_reject_and_the_forwarders_signals(
    config: Config, session: Session
) -> None:
    # Earlier mail through the same forwarder (its IP, its SPF-validated MAIL FROM domain), of other
    # authors, that bob marked junk: in the forward ruleset's mailbox and, for comparison, in Inbox.
    other = outcome()
    other_dmarc = replace(other.dmarc, organizational_domain="y.example")
    through_forwarder = replace(
        arrival(),
        outcome=replace(
            other,
            from_address="x@y.example",
            from_domain="y.example",
            dmarc=other_dmarc,
            verified_dkim_domains=[],
        ),
    )
    flag(session, through_forwarder, "Forwarded", junk=True, count=10)
    flag(session, through_forwarder, "Inbox", junk=True, count=10)
    # Forwarded mail whose DMARC fails (the forwarder broke SPF alignment): not rejected, not blamed.
    mail = replace(arrival({"X-Forwarded-For": "bob@old.example"}), outcome=outcome("fail", "reject"))
    analysis = analyze(config, mail, session, NOW)
    assert (analysis.action, analysis.verdict.reason) == ("accept", "no-bad-signals")
    (copy,) = analysis.copies
    assert (copy.mailbox, copy.forwarded, analysis.verdict.dmarc_override) == ("Forwarded", True, "forwarded")
    # Without the ruleset the forwarder's signals decide: the SPF domain's history is all junk.
    direct = analyze(config, arrival(), session, NOW)
    assert (direct.action, direct.verdict.reason) == ("reject", "dkimspf")
    assert analyze(config, replace(mail, headers=()), session, NOW).reply == DMARC_REJECT_REPLY
    # A quarantine is not a reject: applied to forwarded mail too, so nothing is overridden.
    quarantined = analyze(config, replace(mail, outcome=outcome("fail", "quarantine")), session, NOW)
    assert (quarantined.action, quarantined.verdict.dmarc_override) == ("quarantine", None)
    assert [c.mailbox for c in quarantined.copies] == ["Junk"]


def test_accept_rejects_to_mailbox(
    config: Config, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    mail = arrival({"Subject": "rescue me"}, **{"dmarc": outcome("fail", "reject").dmarc})
    with caplog.at_level(logging.INFO):
        analysis = analyze(config, mail, session, NOW)
    assert (analysis.action, analysis.verdict.reason, analysis.result) == (
        "accept",
        "dmarc-policy",
        "accepted",
    )
    assert analysis.verdict.dmarc_override == "local_policy"
    assert analysis.reply.startswith("250 ")
    (copy,) = analysis.copies
    assert (copy.mailbox, copy.destined_mailbox) == ("Maybe", None)
    assert (copy.columns["seen"], copy.columns["is_reject"], copy.columns.get("junk")) == (True, True, None)
    assert "reject accepted to mailbox" in caplog.text


# The junk verdict (SPEC R3.1, R3.4).


def test_a_sender_marked_junk_is_rejected_with_451_into_rejects(config: Config, session: Session) -> None:
    other = replace(arrival(), recipients=(Recipient("bob@example.org", "bob", "Inbox"),))
    flag(session, other, "Inbox", junk=True, count=2)
    analysis = analyze(config, other, session, NOW)
    assert (analysis.action, analysis.result, analysis.reply) == (
        "reject",
        "rejected-junk",
        JUNK_REJECT_REPLY,
    )
    assert analysis.reply.startswith("451 4.3.0")
    (copy,) = analysis.copies
    assert (copy.mailbox, copy.destined_mailbox, copy.columns["seen"], copy.columns["is_reject"]) == (
        "Rejects",
        "Inbox",
        True,
        True,
    )
    assert "X-Postwarden-Reason: msgfromfull\r\n" in analysis.headers


def test_a_sender_marked_notjunk_is_accepted_with_the_method(config: Config, session: Session) -> None:
    flag(session, arrival(), "Inbox", junk=False)
    assert analyze(config, arrival(), session, NOW).verdict.reason == "msgfromfull"


SPF_FAIL = SPFResult("fail", "sender.example", "mfrom")


def test_a_first_message_failing_spf_is_rejected(config: Config, session: Session) -> None:
    failing = outcome("fail", "none")
    mail = arrival(spf_mailfrom=SPF_FAIL, dmarc=failing.dmarc)
    analysis = analyze(config, mail, session, NOW)
    assert (analysis.action, analysis.verdict.reason, analysis.reply) == (
        "reject",
        "spf-fail",
        JUNK_REJECT_REPLY,
    )
    softfail = arrival(spf_mailfrom=replace(SPF_FAIL, status="softfail"), dmarc=failing.dmarc)
    assert analyze(config, softfail, session, NOW).verdict.reason == "spf-fail"
    # DMARC passed (an aligned DKIM signature): the SPF failure is not the From domain's.
    assert analyze(config, arrival(spf_mailfrom=SPF_FAIL), session, NOW).action == "accept"


def test_inconclusive_reports_are_accepted(config: Config, session: Session) -> None:
    failing = outcome("fail", "none")
    mail = arrival(
        {"Subject": "Report Domain: example.org Submitter: x Report-ID: <1>"},
        spf_mailfrom=SPF_FAIL,
        dmarc=failing.dmarc,
    )
    # Looking like a report is not being one: only the report check of R6.2 makes it "reporting".
    assert analyze(config, mail, session, NOW).verdict.reason == "spf-fail"
    valid = replace(mail, report=ReportCheck("tls", "bob@example.org"))
    analysis = analyze(config, valid, session, NOW)
    assert analysis.verdict.reason == "reporting"
    # The reporting address's copy is marked, for the parse after storage and its sweep.
    assert (analysis.report_copy, analysis.copies[0].columns["is_tls_report"]) == (0, True)
    refused = replace(mail, report=ReportCheck("tls", "bob@example.org", "no acceptable DKIM signature"))
    analysis = analyze(config, refused, session, NOW)
    assert (analysis.verdict.reason, analysis.report_copy) == ("spf-fail", None)
    assert "X-Postwarden-TLSReport-Error: no acceptable DKIM signature\r\n" in analysis.headers


def test_one_accepting_recipient_makes_the_reply_250(
    config: Config, session: Session, tmp_path: Path
) -> None:
    two = load_config(
        write_config(tmp_path / "two", ACCOUNTS + '[accounts.carol]\naddresses = ["carol@example.org"]\n')
    )
    carol = Recipient("carol@example.org", "carol", "Inbox")
    mail = replace(arrival(), recipients=(BOB, carol))
    flag(session, mail, "Inbox", junk=True, count=2)  # bob's Inbox only
    analysis = analyze(two, mail, session, NOW)
    assert analysis.reply.startswith("250 ") and analysis.verdict.reason == "no-bad-signals"
    assert [(c.account, c.mailbox) for c in analysis.copies] == [("bob", "Rejects"), ("carol", "Inbox")]


# Configuration.


def test_a_bad_regexp_names_its_key(tmp_path: Path) -> None:
    bad = ACCOUNTS.replace('Subject = "^\\\\[dev\\\\]"', 'Subject = "(unclosed"')
    with pytest.raises(ConfigError, match=r"key 'accounts\.bob\.rulesets\[0\]\.header_regexps\.Subject'"):
        load_config(write_config(tmp_path, bad))
    bad = ACCOUNTS.replace('"@lists\\\\.example$"', '"[a-"')
    with pytest.raises(
        ConfigError, match=r"accounts\.bob\.rulesets\[0\]\.smtp_mail_from_regexp.*regular expression"
    ):
        load_config(write_config(tmp_path, bad))
