"""The decision about an incoming message, straight from authentication outcomes (SPEC R1.5, R3.1, R3.2):
no sockets, no DNS; the SMTP tests (tests/smtpserver/test_smtp_inbound.py) cover the same with real mail."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy.orm import Session

from app.auth.types import (
    AuthOutcome,
    Disposition,
    DKIMResult,
    DMARCRecord,
    DMARCResult,
    DMARCStatus,
    SPFResult,
)
from app.config import Config, load_config
from app.verdict import analysis as analysis_module
from app.verdict.analysis import analyze
from app.verdict.dmarc import DMARC_REJECT_REPLY
from app.verdict.reputation import NO_HISTORY, Reputation
from app.verdict.types import Arrival, Recipient, Verdict
from tests.support.configs import write_config

AUTH_RESULTS = "Authentication-Results: mail.example.org; dmarc=pass header.from=sender.example\r\n"
ACCOUNTS = """
[accounts.bob]
addresses = ["bob@example.org", "robert@example.org"]
junk_mailbox = "Spam"
rejects_mailbox = "Refused"

[accounts.carol]
addresses = ["carol@example.org"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, ACCOUNTS))


def outcome(
    status: DMARCStatus = "pass", disposition: Disposition = "none", testing: bool = False
) -> AuthOutcome:
    """An outcome for mail from alice@sender.example; DMARC `status` with the disposition to apply."""
    return AuthOutcome(
        spf_mailfrom=SPFResult("pass", "sender.example", "mfrom"),
        spf_helo=SPFResult("none", "client.sender.example", "helo"),
        dkim=[DKIMResult("fail", "sender.example", "s1"), DKIMResult("pass", "other.example", "s2")],
        dmarc=DMARCResult(
            status,
            "sender.example",
            policy_domain="sender.example",
            organizational_domain="sender.example",
            record=DMARCRecord(p="reject"),
            disposition=disposition,
            requested_disposition=disposition,
            testing=testing,
        ),
        from_address="alice@sender.example",
        from_domain="sender.example",
        authentication_results=AUTH_RESULTS,
        verified_dkim_domains=["other.example"],
    )


def arrival(auth: AuthOutcome, *recipients: Recipient, mail_from: str = "bounce@sender.example") -> Arrival:
    rcpts = recipients or (Recipient("bob@example.org", "bob", "Inbox"),)
    return Arrival(auth, "192.0.2.7", "client.sender.example", mail_from, rcpts, "tx1")


def placed(config: Config, auth: AuthOutcome, *recipients: Recipient) -> list[tuple[str, str, str | None]]:
    analysis = analyze(config, arrival(auth, *recipients))
    return [(c.account, c.mailbox, c.destined_mailbox) for c in analysis.copies]


def test_passing_mail_is_accepted_into_the_recipients_mailbox(config: Config) -> None:
    analysis = analyze(config, arrival(outcome()))
    assert (analysis.action, analysis.verdict.reason) == ("accept", "no-bad-signals")  # no history
    assert (analysis.reply, analysis.result) == ("250 2.0.0 Message accepted, id tx1", "accepted")
    assert analysis.headers == (AUTH_RESULTS, "X-Postwarden-Reason: no-bad-signals\r\n"), (
        "the Received trace is the handler's"
    )
    (copy,) = analysis.copies
    assert (copy.account, copy.mailbox, copy.destined_mailbox) == ("bob", "Inbox", None)
    assert "seen" not in copy.columns and "is_reject" not in copy.columns
    assert (copy.columns["rcpt_to"], copy.columns["reason"]) == ("bob@example.org", "no-bad-signals")


def test_failing_dmarc_without_a_disposition_is_accepted(config: Config) -> None:
    assert analyze(config, arrival(outcome("fail", "none"))).action == "accept"


def test_quarantine_goes_to_the_accounts_junk_mailbox(config: Config) -> None:
    analysis = analyze(config, arrival(outcome("fail", "quarantine")))
    assert (analysis.action, analysis.verdict.reason, analysis.result) == (
        "quarantine",
        "dmarc-policy",
        "quarantined",
    )
    assert analysis.reply == "250 2.0.0 Message accepted, id tx1"
    (copy,) = analysis.copies
    assert (copy.mailbox, copy.destined_mailbox, copy.columns["reason"]) == ("Spam", None, "dmarc-policy")


def test_reject_is_stored_seen_in_rejects_with_the_destined_mailbox(config: Config) -> None:
    carol = Recipient("carol@example.org", "carol", "Inbox")
    analysis = analyze(config, arrival(outcome("fail", "reject"), carol))
    assert (analysis.action, analysis.reply, analysis.result) == (
        "reject",
        DMARC_REJECT_REPLY,
        "rejected-dmarc",
    )
    assert analysis.reply.startswith("550 5.7.1")
    (copy,) = analysis.copies
    assert (copy.account, copy.mailbox, copy.destined_mailbox) == ("carol", "Rejects", "Inbox")
    assert (copy.columns["seen"], copy.columns["is_reject"], copy.columns["reason"]) == (
        True,
        True,
        "dmarc-policy",
    )
    assert analysis.headers == (AUTH_RESULTS, "X-Postwarden-Reason: dmarc-policy\r\n"), (
        "a stored reject carries its Authentication-Results and reason too"
    )


def test_testing_mode_applies_the_milder_disposition_the_outcome_carries(config: Config) -> None:
    """t=y: DMARC evaluation already lowered reject to quarantine; the verdict applies it as it is."""
    auth = outcome("fail", "quarantine", testing=True)
    auth = replace(auth, dmarc=replace(auth.dmarc, requested_disposition="reject"))
    analysis = analyze(config, arrival(auth))
    assert (analysis.action, [c.mailbox for c in analysis.copies]) == ("quarantine", ["Spam"])


def test_recipients_of_one_account_share_one_copy_per_mailbox(config: Config) -> None:
    bob = Recipient("bob@example.org", "bob", "Inbox")
    robert = Recipient("robert@example.org", "bob", "Inbox")
    reports = Recipient("dmarc@example.org", "bob", "Reports")
    assert placed(config, outcome(), bob, robert, reports) == [
        ("bob", "Inbox", None),
        ("bob", "Reports", None),
    ]
    # A quarantine or a reject files every one of them in the same mailbox: one copy.
    assert placed(config, outcome("fail", "quarantine"), bob, robert, reports) == [("bob", "Spam", None)]
    assert placed(config, outcome("fail", "reject"), bob, robert, reports) == [("bob", "Refused", "Inbox")]


def test_recipients_in_two_accounts_get_a_copy_each(config: Config) -> None:
    bob = Recipient("bob@example.org", "bob", "Inbox")
    carol = Recipient("carol@example.org", "carol", "Inbox")
    analysis = analyze(config, arrival(outcome("fail", "reject"), bob, carol))
    assert [(c.account, c.mailbox, c.destined_mailbox) for c in analysis.copies] == [
        ("bob", "Refused", "Inbox"),
        ("carol", "Rejects", "Inbox"),
    ]
    assert [c.columns["rcpt_to"] for c in analysis.copies] == ["bob@example.org", "carol@example.org"]


def test_message_columns_come_from_the_session_and_the_outcome(config: Config) -> None:
    (copy,) = analyze(config, arrival(outcome())).copies
    assert copy.columns == {
        "remote_ip": "192.0.2.7",
        "ehlo": "client.sender.example",
        "mail_from": "bounce@sender.example",
        "mail_from_domain": "sender.example",
        "msg_from": "alice@sender.example",
        "msg_from_domain": "sender.example",
        "msg_from_org_domain": "sender.example",
        "dkim_domains": "other.example",
        "spf_mailfrom_validated": True,
        "ehlo_validated": False,
        "msg_from_validated": True,
        "spf_result": "pass",
        "dkim_result": "pass",  # any passing signature
        "dmarc_result": "pass",
        "dmarc_disposition": "none",
        "rcpt_to": "bob@example.org",
        "reason": "no-bad-signals",
    }


def test_the_null_sender_has_no_mail_from_domain(config: Config) -> None:
    (copy,) = analyze(config, arrival(outcome(), mail_from="")).copies
    assert (copy.columns["mail_from"], copy.columns["mail_from_domain"]) == ("", None)


def test_only_a_reject_names_a_reply() -> None:
    with pytest.raises(ValueError, match="only a reject"):
        Verdict("reject", "x")
    with pytest.raises(ValueError, match="only a reject"):
        Verdict("accept", reply="550 no", result="rejected-x")


def test_recipients_sharing_a_destination_read_its_history_once(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Aliases of one account and mailbox share one reading of the history (its queries run once)."""
    read: list[tuple[str, str]] = []

    def history(session: object, account: str, mailbox: str, *args: object) -> Reputation:
        read.append((account, mailbox))
        return NO_HISTORY

    monkeypatch.setattr(analysis_module, "destination_reputation", history)
    bob = Recipient("bob@example.org", "bob", "Inbox")
    robert = Recipient("robert@example.org", "bob", "Inbox")
    reports = Recipient("dmarc@example.org", "bob", "Reports")
    analyze(config, arrival(outcome(), bob, robert, reports), cast(Session, object()))
    assert read == [("bob", "Inbox"), ("bob", "Reports")]
