"""`postwarden quickstart`, `postwarden dns records DOMAIN`, `postwarden dns check DOMAIN`."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict

import click

from app.cli.common import echo, emit_json, json_option, load, main
from app.config import Config, config_path
from app.dns import resolver_from_config
from app.dnsrecords import (
    CheckResult,
    DNSRecord,
    DNSRecordsError,
    check_domain,
    mta_sts_policy,
    records_for_domain,
)
from app.quickstart import QuickstartError, quickstart


def _records_or_exit(config: Config, domain: str) -> list[DNSRecord]:
    try:
        return records_for_domain(config, domain)
    except DNSRecordsError as e:
        click.echo(f"postwarden: {e}", err=True)
        sys.exit(2)


def echo_records(config: Config, domain: str, records: list[DNSRecord]) -> None:
    """The records as zone-file lines with a comment each, then the MTA-STS policy file."""
    click.echo(f"; DNS records for {domain} (mail host {config.hostname})")
    for record in records:
        click.echo(f"\n; {record.kind}: {record.note}\n{record.zone_line()}")
    policy = mta_sts_policy(config, domain)
    click.echo(f"\n; MTA-STS policy file, to serve over HTTPS at {policy.url}:")
    click.echo("\n".join(f";   {line}" for line in policy.text.splitlines()))


@main.command("quickstart")
@click.argument("address")
@click.option("--hostname", help="The mail host's name (default: mail.<domain of ADDRESS>).")
@click.option(
    "--dev",
    is_flag=True,
    help="Development: loopback listeners (SMTP 2525/2587, IMAP 1143/1993), web on 8080.",
)
@click.pass_context
def quickstart_command(ctx: click.Context, address: str, hostname: str | None, dev: bool) -> None:
    """Write a first configuration for ADDRESS (you@example.org), its keys, database and account."""
    file = config_path(ctx.find_root().obj)
    try:
        result = quickstart(file, address, hostname=hostname, dev=dev)
    except QuickstartError as e:
        click.echo(f"postwarden: {e}", err=True)
        sys.exit(2)
    config = result.config
    click.echo(f"Wrote {result.config_file} for mail host {config.hostname} and domain {result.domain}.")
    click.echo(f"Data (database, messages) goes to {config.data_dir}.\n")
    click.echo(f"Account {result.account!r} ({result.address}), password: {result.password}")
    click.echo("This password is shown once and stored only as a hash: note it now.\n")
    echo_records(config, result.domain, records_for_domain(config, result.domain))


@main.group("dns")
def dns_group() -> None:
    """The DNS records a domain should publish, and checks of them."""


@dns_group.command("records")
@click.argument("domain")
@json_option
@click.pass_context
def dns_records(ctx: click.Context, domain: str, as_json: bool) -> None:
    """Print every DNS record to publish for DOMAIN (SPEC R7.1)."""
    config = load(ctx)
    records = _records_or_exit(config, domain)
    domain = domain.lower().rstrip(".")
    if as_json:
        policy = mta_sts_policy(config, domain)
        emit_json(
            {"domain": domain, "records": [asdict(r) for r in records], "mta_sts_policy": asdict(policy)}
        )
        return
    echo_records(config, domain, records)


def _echo_check(result: CheckResult) -> None:
    record = result.record
    echo(f"{result.status:8} {record.kind:12} {record.rtype:5} {record.name}")
    for value in result.found:  # published in DNS: shown escaped
        echo(f"           found: {value}")
    if result.status != "ok":
        echo(f"           problem: {result.problem}")
        echo(f"           fix: {result.fix}")


@dns_group.command("check")
@click.argument("domain")
@json_option
@click.pass_context
def dns_check(ctx: click.Context, domain: str, as_json: bool) -> None:
    """Look up each record DOMAIN should publish; exit 1 if any is missing or wrong (SPEC R7.2)."""
    config = load(ctx)
    _records_or_exit(config, domain)
    results = asyncio.run(check_domain(config, domain, resolver_from_config(config.dns)))
    if as_json:
        emit_json({"domain": domain.lower().rstrip("."), "results": [asdict(r) for r in results]})
    else:
        for result in results:
            _echo_check(result)
    bad = [r for r in results if r.status != "ok"]
    if not as_json:
        click.echo(f"\n{len(results) - len(bad)} of {len(results)} records ok")
    if bad:
        sys.exit(1)
