"""DMARC evaluations: which are stored (SPEC R2.1, R2.9), what they keep (R2.2), intervals, the CLI.

Evaluations come from real mail over the inbound listener (tests/support/smtpfixtures.py collects what
the SMTP server hands on) and are stored by the task's own function, against the loopback DNS server.
"""

from __future__ import annotations

import json
import logging
import smtplib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import CliRunner
from sqlalchemy import select

from app.accounts import set_password
from app.cli import main
from app.config import Config, load_config
from app.db import session_scope
from app.dmarcreports.evaluation import Evaluation, EvaluationError
from app.dmarcreports.evaluations import (
    evaluation_row,
    record_evaluation,
    store_evaluation,
    store_evaluations,
)
from app.dmarcreports.interval import interval_at, interval_hours, whole_hour
from app.models import DMARCEvaluation
from tests.support.dnsserver import DNSTestServer
from tests.support.smtpfixtures import (
    LineClient,
    ThreadedSMTP,
    client_tls_context,
    make_message,
    publish_sender_domain,
)

SENDER = "alice@sender.example"
RUA_POLICY = "v=DMARC1; p=reject; sp=quarantine; adkim=s; rua=mailto:dmarc@sender.example!10m; ri=3600"


def evaluation(**changes: Any) -> dict[str, Any]:
    """An evaluation as the task gets it: Evaluation.to_json() of what the SMTP process handed on."""
    base: dict[str, Any] = {
        "policy_domain": "sender.example",
        "evaluated": "2026-11-25T13:37:00+00:00",
        "optional": False,
        "rua": ["mailto:dmarc@sender.example"],
        "policy": {
            "p": "reject",
            "sp": None,
            "np": None,
            "adkim": "r",
            "aspf": "r",
            "testing": False,
            "psd": "u",
            "ri": None,
            "discovery_method": "treewalk",
            "fo": "0",
        },
        "source_ip": "192.0.2.10",
        "disposition": "none",
        "requested_disposition": None,
        "dkim_aligned": True,
        "spf_aligned": True,
        "override_reasons": [],
        "envelope_to": "example.org",
        "envelope_from": "sender.example",
        "header_from": "sender.example",
        "dkim": [{"domain": "sender.example", "selector": "s1", "result": "pass"}],
        "spf": [{"domain": "sender.example", "scope": "mfrom", "result": "pass"}],
    }
    return {**base, **changes}


def row_of(**changes: Any) -> DMARCEvaluation:
    return evaluation_row(Evaluation.from_json(evaluation(**changes)))


def stored(config: Config) -> list[DMARCEvaluation]:
    with session_scope(config.resolved_database_url) as session:
        return list(session.scalars(select(DMARCEvaluation).order_by(DMARCEvaluation.id)))


def store_handed_on(smtp: ThreadedSMTP) -> list[DMARCEvaluation]:
    """Store what the SMTP server handed on, as the record_dmarc_evaluation task does; the rows."""
    for handed_on in smtp.evaluations:
        store_evaluation(smtp.config, json.loads(json.dumps(handed_on)))  # through JSON, as Celery sends it
    return stored(smtp.config)


def send(smtp: ThreadedSMTP, rcpt: str = "admin@example.org", mail_from: str = SENDER) -> str:
    client = LineClient(smtp.inbound_port)
    try:
        assert client.command("EHLO client.sender.example").startswith("250")
        assert client.command(f"MAIL FROM:<{mail_from}>").startswith("250")
        reply = client.command(f"RCPT TO:<{rcpt}>")
        if not reply.startswith("250"):
            return reply
        assert client.command("DATA").startswith("354")
        client.send(make_message(SENDER, rcpt) + b".\r\n")
        return client.reply()
    finally:
        client.close()


# Intervals (R2.2).


@pytest.mark.parametrize(
    ("ri", "hours"),
    [
        (None, 24),
        (0, 24),
        (1, 1),
        (3600, 1),
        (3601, 2),
        (3 * 3600, 3),
        (3 * 3600 + 1, 4),
        (5 * 3600, 4),
        (7 * 3600, 6),
        (9 * 3600, 8),
        (13 * 3600, 12),
        (23 * 3600 + 1, 24),
        (86400, 24),
        (7 * 86400, 24),
    ],
)
def test_legacy_ri_rounds_up_to_hours_then_down_to_a_divisor_of_24(ri: int | None, hours: int) -> None:
    assert interval_hours(ri) == hours


def test_intervals_are_aligned_to_utc_midnight_whatever_the_time_zone_of_the_moment() -> None:
    moment = datetime(2026, 11, 25, 13, 37, 5, tzinfo=UTC)
    assert (interval_at(moment, 6).start, interval_at(moment, 6).end) == (
        datetime(2026, 11, 25, 12, tzinfo=UTC),
        datetime(2026, 11, 25, 18, tzinfo=UTC),
    )
    day = interval_at(moment, 24)
    assert (day.start, day.end, day.hours) == (
        datetime(2026, 11, 25, tzinfo=UTC),
        datetime(2026, 11, 26, tzinfo=UTC),
        24,
    )
    # 01:30 at +05:00 is 20:30 UTC the day before: its 8-hour interval is 16:00-24:00 UTC.
    eastern = datetime(2026, 11, 25, 1, 30, tzinfo=timezone(timedelta(hours=5)))
    assert interval_at(eastern, 8).start == datetime(2026, 11, 24, 16, tzinfo=UTC)
    assert whole_hour(eastern) == datetime(2026, 11, 24, 20, tzinfo=UTC)
    with pytest.raises(ValueError, match="5 hours does not divide a day"):
        interval_at(moment, 5)


def test_every_hour_of_a_day_falls_in_exactly_one_interval_of_each_length() -> None:
    for hours in (1, 2, 3, 4, 6, 8, 12, 24):
        starts = {interval_at(datetime(2026, 11, 25, h, 59, tzinfo=UTC), hours).start for h in range(24)}
        assert len(starts) == 24 // hours
        assert all(start.hour % hours == 0 and start.minute == 0 for start in starts)


# What is stored (R2.2).


def test_an_evaluation_keeps_the_fields_of_r2_2(config_file: Path) -> None:
    config = load_config(config_file)
    ev = evaluation(
        policy={**evaluation()["policy"], "ri": 7200, "sp": "quarantine", "np": "reject", "testing": True},
        source_ip="::ffff:192.0.2.10",
        override_reasons=["local_policy"],
        dkim=[
            {"domain": "other.example", "selector": "x", "result": "pass"},
            {"domain": "sender.example", "selector": "bad", "result": "fail"},
            {"domain": "mail.sender.example", "selector": "m", "result": "pass"},
            {"domain": "sender.example", "selector": "s1", "result": "pass"},
        ],
    )
    assert store_evaluation(config, ev)
    (row,) = stored(config)
    assert (row.policy_domain, row.evaluated) == (
        "sender.example",
        datetime(2026, 11, 25, 13, 37, tzinfo=UTC),
    )
    assert (row.interval_hours, row.interval_start, row.interval_end) == (
        2,
        datetime(2026, 11, 25, 12, tzinfo=UTC),
        datetime(2026, 11, 25, 14, tzinfo=UTC),
    )
    assert json.loads(row.rua) == ["mailto:dmarc@sender.example"]
    assert (row.p, row.sp, row.np, row.adkim, row.aspf, row.testing, row.psd, row.discovery_method) == (
        "reject",
        "quarantine",
        "reject",
        "r",
        "r",
        True,
        "u",
        "treewalk",
    )
    assert row.source_ip == "192.0.2.10", "an IPv4-mapped address is reported as IPv4"
    assert (row.disposition, row.dkim_aligned, row.spf_aligned) == ("none", True, True)
    assert json.loads(row.override_reasons) == ["local_policy"]
    assert (row.envelope_to, row.envelope_from, row.header_from) == (
        "example.org",
        "sender.example",
        "sender.example",
    )
    # RFC 9990 2.1.2 order: strictly aligned pass, relaxed aligned pass, other pass, failures.
    assert json.loads(row.dkim_results) == [
        ["sender.example", "s1", "pass"],
        ["mail.sender.example", "m", "pass"],
        ["other.example", "x", "pass"],
        ["sender.example", "bad", "fail"],
    ]
    assert json.loads(row.spf_results) == [["sender.example", "mfrom", "pass"]]


def test_identical_records_share_a_key_that_any_difference_changes() -> None:
    first, second = row_of(), row_of(evaluated="2026-11-25T20:00:00+00:00")
    assert first.record_key == second.record_key, "the time is not part of a report row"
    for change in (
        {"source_ip": "192.0.2.11"},
        {"disposition": "quarantine"},
        {"spf_aligned": False},
        {"envelope_to": "example.net"},
        {"dkim": []},
        {"spf": [{"domain": "sender.example", "scope": "mfrom", "result": "softfail"}]},
        {"override_reasons": ["mailing_list"]},
    ):
        assert row_of(**change).record_key != first.record_key, change


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"policy_domain": None}, "None is not a domain name"),
        ({"header_from": ""}, "header_from: a domain name is required"),
        ({"evaluated": "yesterday"}, "malformed DMARC evaluation"),
        ({"evaluated": "2026-11-25T13:37:00"}, "has no time zone"),
        ({"disposition": "drop"}, "disposition: 'drop' is not one of none, quarantine, reject"),
        ({"source_ip": "not-an-ip"}, "does not appear to be an IPv4 or IPv6 address"),
        ({"policy": {"p": "reject", "ri": 3600}}, None),
    ],
)
def test_malformed_evaluations_are_refused_with_the_field_named(
    changes: dict[str, Any], message: str | None
) -> None:
    if message is None:  # a sparse policy takes the defaults
        row = row_of(**changes)
        assert (row.adkim, row.aspf, row.psd, row.interval_hours) == ("r", "r", "u", 1)
        return
    with pytest.raises(EvaluationError, match=message):
        Evaluation.from_json(evaluation(**changes))


def test_a_missing_field_is_named_and_the_task_logs_instead_of_failing(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = evaluation()
    del broken["header_from"]
    with pytest.raises(EvaluationError, match="field 'header_from' is missing"):
        Evaluation.from_json(broken)
    with caplog.at_level(logging.WARNING):
        assert store_evaluation(load_config(config_file), broken) is False
    assert (
        "dmarc evaluation not stored: malformed DMARC evaluation: field 'header_from' is missing"
        in caplog.text
    )
    assert stored(load_config(config_file)) == []


def test_a_batch_is_stored_in_one_go_and_a_malformed_member_is_skipped(config_file: Path) -> None:
    """The SMTP process sends what it gathered as one task; one bad evaluation must not cost the rest."""
    config = load_config(config_file)
    broken = evaluation()
    del broken["header_from"]
    batch = [evaluation(source_ip="192.0.2.1"), broken, evaluation(source_ip="192.0.2.2"), evaluation(rua=[])]
    assert store_evaluations(config, batch) == 2
    assert sorted(row.source_ip for row in stored(config)) == ["192.0.2.1", "192.0.2.2"]


def test_without_rua_nothing_is_stored(config_file: Path) -> None:
    config = load_config(config_file)
    with session_scope(config.resolved_database_url) as session:
        assert record_evaluation(session, config, Evaluation.from_json(evaluation(rua=[]))) is None
    assert stored(config) == []


def test_off_switch_stores_nothing(config_file: Path) -> None:
    config = load_config(config_file).model_copy(update={"no_outgoing_dmarc_reports": True})
    assert store_evaluation(config, evaluation()) is False
    assert stored(config) == []


# The conditions of R2.1, with real mail.


def test_evaluated_mail_from_a_domain_with_rua_is_stored(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    assert send(smtp).startswith("250")
    (row,) = store_handed_on(smtp)
    assert (row.policy_domain, row.optional, row.disposition) == ("sender.example", False, "none")
    assert row.interval_hours == 1, "ri=3600 makes hourly intervals"
    assert json.loads(row.rua) == ["mailto:dmarc@sender.example"], "the !10m suffix is dropped"
    assert (row.p, row.sp, row.adkim) == ("reject", "quarantine", "s")
    assert (row.source_ip, row.envelope_from, row.header_from) == (
        "127.0.0.1",
        "sender.example",
        "sender.example",
    )
    assert (row.spf_aligned, row.dkim_aligned) == (True, False)
    assert json.loads(row.spf_results) == [["sender.example", "mfrom", "pass"]], "RFC 9990: no HELO result"


def test_a_domain_without_rua_leaves_no_evaluation(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", "v=DMARC1; p=reject")
    assert send(smtp).startswith("250")
    assert store_handed_on(smtp) == []


def test_mail_refused_before_data_leaves_no_evaluation(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    assert send(smtp, rcpt="nobody@example.org").startswith("550 5.1.1")
    assert send(smtp, rcpt="someone@elsewhere.example").startswith("550 5.7.1")
    assert store_handed_on(smtp) == []


def test_dmarc_reject_is_stored_optional_until_we_accepted_mail_from_the_domain(
    smtp: ThreadedSMTP, dns: DNSTestServer
) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY, spf="v=spf1 -all")
    assert send(smtp).startswith("550 5.7.1")
    dns.clear()
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    smtp.service.resolver._resolver.cache.flush()  # type: ignore[union-attr]  # the SPF record changed
    assert send(smtp).startswith("250")
    dns.clear()
    publish_sender_domain(dns, "sender.example", RUA_POLICY, spf="v=spf1 -all")
    smtp.service.resolver._resolver.cache.flush()  # type: ignore[union-attr]
    assert send(smtp).startswith("550 5.7.1")
    rows = store_handed_on(smtp)
    assert [(r.disposition, r.requested_disposition, r.optional) for r in rows] == [
        ("reject", "reject", True),  # nobody can make us report a domain we never took mail from
        ("none", None, False),
        ("reject", "reject", False),
    ]


def test_mail_to_our_reporting_address_is_stored_optional(smtp: ThreadedSMTP, dns: DNSTestServer) -> None:
    publish_sender_domain(dns, "sender.example", RUA_POLICY)
    assert send(smtp, rcpt="dmarc-reports@example.org").startswith("250")
    assert [r.optional for r in store_handed_on(smtp)] == [True]


def test_authenticated_submission_leaves_no_evaluation(
    smtp: ThreadedSMTP, dns: DNSTestServer, tls_ca: trustme.CA
) -> None:
    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject; rua=mailto:dmarc@example.org")
    with session_scope(smtp.database_url) as session:
        set_password(session, "bob", "secret horse")
    with smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10) as client:
        client.starttls(context=client_tls_context(tls_ca))
        client.login("bob", "secret horse")
        assert (
            client.sendmail(
                "bob@example.org", ["x@example.net"], make_message("bob@example.org", "x@example.net")
            )
            == {}
        )
    assert store_handed_on(smtp) == []


# The CLI.


def test_cli_lists_pending_evaluations_per_domain(config_file: Path) -> None:
    config = load_config(config_file)
    for ev in (
        evaluation(),
        evaluation(evaluated="2026-11-25T15:00:00+00:00", optional=True),
        evaluation(policy_domain="other.example", header_from="other.example"),
    ):
        assert store_evaluation(config, ev)
    runner = CliRunner()
    result = runner.invoke(main, ["--config", str(config_file), "dmarc", "evaluations", "--json"])
    assert result.exit_code == 0, result.output
    listed = {p["policy_domain"]: p for p in json.loads(result.output)}
    assert (listed["sender.example"]["evaluations"], listed["sender.example"]["optional"]) == (2, 1)
    assert listed["sender.example"]["next_report"].startswith("2026-11-26 00:00:00")
    assert listed["other.example"]["evaluations"] == 1
    one = runner.invoke(main, ["--config", str(config_file), "dmarc", "evaluations", "other.example"])
    assert one.exit_code == 0 and "other.example  1 evaluations (0 optional)" in one.output
    assert "sender.example" not in one.output
    none = runner.invoke(main, ["--config", str(config_file), "dmarc", "evaluations", "nothing.example"])
    assert none.exit_code == 0 and "no pending evaluations for nothing.example" in none.output


# The one serialiser of the hand-off.


def test_an_evaluation_reads_back_from_its_json_unchanged() -> None:
    handed_on = Evaluation.from_json(evaluation(policy={"p": None, "ri": 3600, "testing": True}))
    assert handed_on.policy.p is None and handed_on.policy.ri == 3600 and handed_on.policy.adkim == "r"
    wire = json.loads(json.dumps(handed_on.to_json()))  # as Celery's json serializer carries it
    assert Evaluation.from_json(wire) == handed_on
    assert wire == {**evaluation(), "policy": wire["policy"]}, "the fields of the wire form are R2.2's"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"requested_disposition": "drop"}, "requested_disposition: 'drop' is not one of"),
        ({"policy": {"p": 1}}, "p: 1 is not text"),
        ({"policy": {"ri": "hourly"}}, "ri: 'hourly' is not a number of seconds"),
        ({"dkim": [{"domain": "sender.example"}]}, "field 'selector' is missing"),
        ({"spf": "pass"}, "malformed DMARC evaluation"),
    ],
)
def test_the_task_input_is_checked_field_by_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        Evaluation.from_json(evaluation(**changes))
