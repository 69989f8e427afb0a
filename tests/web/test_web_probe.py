"""The TLS probe page: postmaster only, GET probes without connecting, the connect action is a POST
with the CSRF token; and once in Chromium (screenshot probe.png).

Set POSTWARDEN_SCREENSHOTS to a directory to get a copy of the screenshot there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from starlette.testclient import TestClient

from app.config import Config, load_config
from app.web.app import create_app
from tests.queue.test_probe import BACKUP, DOMAIN, MX, publish
from tests.support.browser import keep_screenshot, logged_in_chromium
from tests.support.dnsserver import DNSTestServer
from tests.support.httpsserver import LOOPBACK_NETWORKS, HTTPSTestServer
from tests.support.smtppeers import smtp_peer, spki_sha256
from tests.support.webclient import form_token, log_in, write_web_config

PASSWORD = "correct horse battery"
BOB_PASSWORD = "bob's own password"


@pytest.fixture
def peer_cert(https_ca: trustme.CA) -> trustme.LeafCert:
    return https_ca.issue_cert(MX)


@pytest.fixture
def peer(peer_cert: trustme.LeafCert) -> Iterator[int]:
    """An SMTP peer for MX with a certificate from the test CA; its port."""
    with smtp_peer(peer_cert) as running:
        yield running.port


@pytest.fixture
def web_config(
    tmp_path: Path, dns: DNSTestServer, https_server: HTTPSTestServer, https_ca_file: Path, peer: int
) -> Config:
    """The web test config whose delivery reaches the peer and the HTTPS server, trusting the test CA."""
    write_web_config(tmp_path / "config", dns.port, {"admin": PASSWORD, "bob": BOB_PASSWORD})
    path = tmp_path / "config" / "postwarden.toml"
    with path.open("a") as toml:
        toml.write(
            f"\n[delivery]\nsmtp_port = {peer}\nmtasts_https_port = {https_server.port}\n"
            f'https_allowed_networks = {json.dumps(LOOPBACK_NETWORKS)}\nca_bundle = "{https_ca_file}"\n'
            "connect_timeout = 5\ncommand_timeout = 5\n"
        )
    return load_config(path)


@pytest.fixture
def client(web_config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(web_config), base_url="http://127.0.0.1", follow_redirects=False) as c:
        yield c


def test_only_the_postmaster(client: TestClient, dns: DNSTestServer) -> None:
    assert client.get("/tls-probe").status_code == 303  # to the login form
    log_in(client, "bob", BOB_PASSWORD)
    assert client.get(f"/tls-probe?domain={DOMAIN}").status_code == 403
    assert 'href="/tls-probe"' not in client.get("/mail").text  # not in an ordinary account's header


def test_the_postmaster_s_header_links_to_the_probe(client: TestClient) -> None:
    log_in(client, "admin", PASSWORD)
    assert '<a href="/tls-probe">TLS probe</a>' in client.get("/dns").text


def test_get_probes_without_connecting(
    client: TestClient, dns: DNSTestServer, https_server: HTTPSTestServer
) -> None:
    publish(dns, https_server, "enforce", MX, BACKUP)
    log_in(client, "admin", PASSWORD)
    page = client.get(f"/tls-probe?domain={DOMAIN}.")
    assert page.status_code == 200
    assert f"TLS probe for {DOMAIN}" in page.text and "mode <strong>enforce</strong>" in page.text
    assert f"checked by PKIX for {MX}" in page.text and f"MX host {BACKUP} does not match" in page.text
    assert "Test session" not in page.text, "no connection on a GET"
    assert 'name="csrf_token"' in page.text


def test_connect_is_a_post_with_the_token(
    client: TestClient, dns: DNSTestServer, https_server: HTTPSTestServer
) -> None:
    publish(dns, https_server, "enforce", MX)
    log_in(client, "admin", PASSWORD)
    assert client.post("/tls-probe", data={"domain": DOMAIN}).status_code == 403
    assert client.post("/tls-probe", data={"domain": DOMAIN, "csrf_token": "wrong"}).status_code == 403
    token = form_token(client, f"/tls-probe?domain={DOMAIN}")
    page = client.post("/tls-probe", data={"domain": DOMAIN, "csrf_token": token})
    assert page.status_code == 200
    assert "session opened" in page.text and "STARTTLS: negotiated" in page.text
    assert f"ok: PKIX, valid for {MX}" in page.text and "trustme" in page.text


def test_bad_domain_and_dns_failure(client: TestClient, dns: DNSTestServer) -> None:
    log_in(client, "admin", PASSWORD)
    bad = client.get("/tls-probe?domain=<script>x</script>")
    assert bad.status_code == 400 and "Not a domain name" in bad.text and "<script>x" not in bad.text
    dns.servfail(DOMAIN)
    failed = client.get(f"/tls-probe?domain={DOMAIN}")
    assert failed.status_code == 200 and f"Delivery has nowhere to go: MX lookup for {DOMAIN}" in failed.text


def test_hostile_dns_text_is_escaped(client: TestClient, dns: DNSTestServer) -> None:
    dns.add(DOMAIN, "MX", "10 mx\\027[31m.example.net.")
    dns.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=<b>\\027[2J"')
    log_in(client, "admin", PASSWORD)
    page = client.get(f"/tls-probe?domain={DOMAIN}")
    assert page.status_code == 200 and "\x1b" not in page.text and "<b>" not in page.text
    assert "mx\\027[31m.example.net" in page.text and "&lt;b&gt;" in page.text


def test_browser_probe_and_connect(
    web_config: Config, dns: DNSTestServer, https_server: HTTPSTestServer, tmp_path: Path
) -> None:
    """Chromium: log in as the postmaster, probe an MTA-STS domain, then probe and connect; no
    console error."""
    publish(dns, https_server, "enforce", MX, BACKUP)
    shot = tmp_path / "probe.png"
    with logged_in_chromium(web_config, "/tls-probe", "admin", PASSWORD) as (page, base):
        page.fill("#domain", DOMAIN)
        with page.expect_navigation():
            page.click('form[method="get"] button')
        assert page.url == f"{base}/tls-probe?domain={DOMAIN}"
        assert "enforce" in page.inner_text("#mtasts")
        with page.expect_navigation():
            page.click("#connect")
        assert "session opened" in page.inner_text("#hosts")
        assert "not use it" in page.inner_text("#hosts"), "the host outside the policy"
        page.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot)


def test_browser_probe_of_a_dane_domain(
    web_config: Config,
    dns: DNSTestServer,
    https_server: HTTPSTestServer,
    peer_cert: trustme.LeafCert,
    tmp_path: Path,
) -> None:
    """Chromium: a DNSSEC-signed domain whose MX has a TLSA record for the peer's key: the page shows
    the TLSA record, DANE deciding, and the test session matching it (screenshot probe-dane.png)."""
    publish(dns, https_server, None, MX)
    dns.add(f"_25._tcp.{MX}", "TLSA", f"3 1 1 {spki_sha256(peer_cert)}")
    dns.authentic(DOMAIN)
    shot = tmp_path / "probe-dane.png"
    with logged_in_chromium(web_config, f"/tls-probe?domain={DOMAIN}", "admin", PASSWORD) as (page, _):
        assert "DNSSEC-authenticated" in page.inner_text("#hosts-source")
        assert "none published" in page.inner_text("#mtasts")
        with page.expect_navigation():
            page.click("#connect")
        hosts = page.inner_text("#hosts")
        assert f"TLSA at _25._tcp.{MX}" in hosts and f"3 1 1 {spki_sha256(peer_cert).upper()}" in hosts
        assert "decided by: DANE" in hosts and "ok: matches the TLSA records (DANE)" in hosts
        page.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot)
