"""Who sends our TLS reports (SPEC R5.3): `postmaster@<d>`, d the configured domain of the mail host.

d is found by walking up from the host name one label at a time to the first configured domain. The
report's DKIM signature must be by exactly the From domain (RFC 8460 §5.3, we are strict), so a d
without DKIM selectors means no reports at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Config, DKIMSelector


@dataclass(frozen=True)
class Submitter:
    domain: str
    selectors: tuple[DKIMSelector, ...]

    @property
    def address(self) -> str:
        return f"postmaster@{self.domain}"


class NoSubmitterError(Exception):
    """No report can be sent; the message says why and what to configure."""


def host_domains(hostname: str) -> list[str]:
    """The host name and each parent: mail.example.org, example.org, org."""
    labels = hostname.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def find_submitter(config: Config) -> Submitter:
    for name in host_domains(config.hostname):
        domain = config.domains.get(name)
        if domain is None:
            continue
        if not domain.dkim:
            raise NoSubmitterError(
                f"domain {name!r} of mail host {config.hostname!r} has no DKIM selectors; "
                f"TLS reports must be DKIM-signed by {name} (add [[domains.{name!r}.dkim]])"
            )
        return Submitter(name, tuple(domain.dkim))
    raise NoSubmitterError(
        f"no configured domain is mail host {config.hostname!r} or a parent of it; "
        "TLS reports are sent from postmaster@ such a domain (add it to [domains], with DKIM)"
    )
