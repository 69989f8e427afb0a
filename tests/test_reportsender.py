"""Who sends our reports (app/reportsender.py): one walk up from the host name, a rule per report type."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import load_config
from app.reportsender import NoReportSenderError, dmarc_report_sender, host_domains, tls_report_sender
from tests.reports.test_tlsreports import dkim_config
from tests.support.configs import write_config
from tests.support.dnsserver import DNSTestServer

# DMARC reports (SPEC R2.4): from postmaster@<host name>, signed if a configured domain is found.


def test_sender_signs_with_the_nearest_configured_parent_of_the_host(
    tmp_path: Path, dns: DNSTestServer
) -> None:
    nearest = load_config(write_config(tmp_path / "a", '\n[domains."mail.example.org"]\n', dns_port=dns.port))
    assert dmarc_report_sender(nearest).signing_domain == "mail.example.org"
    parent = load_config(write_config(tmp_path / "b", dns_port=dns.port))
    assert (dmarc_report_sender(parent).signing_domain, dmarc_report_sender(parent).address) == (
        "example.org",
        "postmaster@mail.example.org",
    )
    lonely = parent.model_copy(update={"hostname": "mx.other.example"})
    assert dmarc_report_sender(lonely).signing_domain is None


# TLS reports (SPEC R5.3): from postmaster@d, signed by d, or none at all.


def test_submitter_is_the_first_configured_domain_walking_up_from_the_host(
    tmp_path: Path, dns: DNSTestServer
) -> None:
    assert host_domains("mail.eu.example.org") == [
        "mail.eu.example.org",
        "eu.example.org",
        "example.org",
        "org",
    ]
    config = dkim_config(tmp_path, dns, '\n[domains."eu.example.org"]\n')
    # eu.example.org is configured but has no DKIM: it is the first found, so no reports at all.
    config = config.model_copy(update={"hostname": "mail.eu.example.org"})
    with pytest.raises(NoReportSenderError, match=r"'eu.example.org' .* has no DKIM selectors"):
        tls_report_sender(config)
    submitter = tls_report_sender(config.model_copy(update={"hostname": "mail.example.org"}))
    assert (submitter.domain, submitter.address) == ("example.org", "postmaster@example.org")
    assert [s.selector for s in submitter.selectors] == ["ed1", "rsa1"]
    with pytest.raises(NoReportSenderError, match=r"no configured domain is mail host 'mx.example.com'"):
        tls_report_sender(config.model_copy(update={"hostname": "mx.example.com"}))
