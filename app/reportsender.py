"""Who sends our reports: `postmaster@` one of our names, DKIM-signed by a configured domain.

Both report types start from the same walk: up from the mail host's name one label at a time to the
first configured domain (`host_domain`). They differ in what they make of it, each as its spec asks:

- DMARC reports (`dmarc_report_sender`, SPEC R2.4, RFC 9990 2.6.2): From postmaster@<host name>,
  signed by that domain, which aligns (relaxed) with the From domain; without one, or without its
  DKIM selectors, the reports go out unsigned.
- TLS reports (`tls_report_sender`, SPEC R5.3): From postmaster@<that domain> (d, also the report's
  submitter), signed by exactly d (RFC 8460 §5.3, we are strict): without d, or without its DKIM
  selectors, no report can go out (`NoReportSenderError` says what to configure).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Config, DKIMSelector, Domain


@dataclass(frozen=True)
class ReportSender:
    domain: str  # the From domain: reports come from postmaster@domain
    signing_domain: str | None  # None: no configured domain for the host; reports go out unsigned
    selectors: tuple[DKIMSelector, ...]

    @property
    def address(self) -> str:
        return f"postmaster@{self.domain}"


class NoReportSenderError(Exception):
    """No TLS report can be sent; the message says why and what to configure."""


def host_domains(hostname: str) -> list[str]:
    """The host name and each parent: mail.example.org, example.org, org."""
    labels = hostname.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def host_domain(config: Config) -> tuple[str, Domain] | None:
    """The first configured domain that is the mail host's name or a parent of it, with its config."""
    for name in host_domains(config.hostname):
        domain = config.domains.get(name)
        if domain is not None:
            return name, domain
    return None


def dmarc_report_sender(config: Config) -> ReportSender:
    """postmaster@<host name>, signed by the host's configured domain if there is one."""
    found = host_domain(config)
    if found is None:
        return ReportSender(config.hostname, None, ())
    name, domain = found
    return ReportSender(config.hostname, name, tuple(domain.dkim))


def tls_report_sender(config: Config) -> ReportSender:
    """postmaster@d, signed by d: the host's configured domain, which must have DKIM selectors."""
    found = host_domain(config)
    if found is None:
        raise NoReportSenderError(
            f"no configured domain is mail host {config.hostname!r} or a parent of it; "
            "TLS reports are sent from postmaster@ such a domain (add it to [domains], with DKIM)"
        )
    name, domain = found
    if not domain.dkim:
        raise NoReportSenderError(
            f"domain {name!r} of mail host {config.hostname!r} has no DKIM selectors; "
            f"TLS reports must be DKIM-signed by {name} (add [[domains.{name!r}.dkim]])"
        )
    return ReportSender(name, name, tuple(domain.dkim))
