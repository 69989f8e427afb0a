"""`postwarden tls ...`: what outgoing delivery does about TLS for a domain, checked live.

postwarden tls probe DOMAIN [--connect] [--json]
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict

import click

from app.cli.common import echo, emit_json, json_option, load, main
from app.dns import resolver_from_config
from app.queue.probe import ConnectionProbe, HostProbe, MTASTSProbe, ProbeResult, probe


@main.group("tls")
def tls() -> None:
    """TLS of outgoing delivery (MTA-STS, DANE)."""


@tls.command("probe")
@click.argument("domain")
@click.option("--connect", is_flag=True, help="Also open a test session with each host (no mail is sent).")
@json_option
@click.pass_context
def probe_command(ctx: click.Context, domain: str, connect: bool, as_json: bool) -> None:
    """What delivery to DOMAIN would do now: MX hosts, MTA-STS (fetched fresh), DANE, TLS per host.

    Exit status 1 when delivery would have nowhere to go (DNS failure, null MX, no such domain).
    """
    config = load(ctx)
    resolver = resolver_from_config(config.dns, cache=False)
    result = asyncio.run(probe(config, resolver, domain, connect=connect))
    if as_json:
        emit_json(asdict(result))
    else:
        for line in result_lines(result):
            echo(line)
    if result.error:
        sys.exit(1)


def result_lines(result: ProbeResult) -> list[str]:
    """The probe as text lines (outside text still unescaped: `echo` escapes it)."""
    lines = [f"Domain: {result.domain}"]
    if result.error:
        lines.append(f"Error: {result.error}")
    if result.route:
        lines.append(f"Route: smarthost {result.route} (the domain's MTA-STS and DANE do not apply)")
    elif not result.error:
        source = "implicit MX (no MX records: the domain itself)" if result.implicit_mx else "MX records"
        dnssec = "DNSSEC-authenticated" if result.mx_authentic else "not DNSSEC-authenticated"
        lines.append(f"Hosts: {source}, {dnssec}")
    if result.mtasts is not None:
        lines.append(f"MTA-STS: {_mtasts_text(result.mtasts)}")
        cached = result.mtasts.cached
        lines.append(f"MTA-STS cache (delivery applies it while the id is unchanged): {cached or 'empty'}")
    for host in result.hosts:
        lines += _host_lines(host)
    if result.hosts_left_out:
        lines.append(f"({result.hosts_left_out} more hosts not probed)")
    return lines


def _mtasts_text(sts: MTASTSProbe) -> str:
    if sts.mode is not None:
        return f"id {sts.record_id}, mode {sts.mode}, mx {', '.join(sts.mx) or '-'}, max_age {sts.max_age}"
    if sts.failure is not None:
        return f"record id {sts.record_id}, policy not fetched ({sts.failure}): {sts.error}"
    return f"no policy ({sts.error})" if sts.error else "no policy published"


def _host_lines(host: HostProbe) -> list[str]:
    lines = [
        f"Host {host.host} port {host.port}: {'used' if host.use_host else 'NOT USED'}",
        f"  addresses: {', '.join(host.addresses) or '-'}",
        f"  TLSA: {host.dane}",
        *(f"    {record}" for record in host.tlsa),
        f"  TLS: {host.tls_mode}",
        f"  decided by: {host.basis}",
        *(f"  policy failure: {failure}" for failure in host.failures),
    ]
    if host.error:
        lines.append(f"  error: {host.error}")
    if host.connection is not None:
        lines += _connection_lines(host.connection)
    return lines


def _connection_lines(c: ConnectionProbe) -> list[str]:
    state = "session opened" if c.opened else "session failed"
    lines = [f"  connection to {c.address} port {c.port}: {state}"]
    if c.server_name:
        lines.append(f"    server name (EHLO): {c.server_name}")
    version = f" ({c.tls_version})" if c.tls_version else ""
    lines.append(f"    STARTTLS: {c.starttls}{version}")
    if c.certificate is not None:
        cert = c.certificate
        lines += [
            f"    certificate subject: {cert.subject}",
            f"    certificate issuer: {cert.issuer}",
            f"    certificate names: {', '.join(cert.names) or '-'}; valid until {cert.not_after}",
        ]
    lines.append(f"    verification: {c.verification}")
    if c.error:
        lines.append(f"    error: {c.error}")
    return lines
