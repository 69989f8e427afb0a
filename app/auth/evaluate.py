"""The one entry point the SMTP server calls to authenticate an incoming message (SPEC R1.4).

SPF (MAIL FROM and HELO), DKIM (every signature) and DMARC policy discovery need nothing from each
other, so they run concurrently; DMARC then decides from their results. Nothing here blocks: all
DNS goes through the async resolver, and the message is only parsed in memory.
"""

from __future__ import annotations

import asyncio

from app.auth.authresults import authentication_results
from app.auth.dkim import verify_all
from app.auth.dmarc import discover_policy
from app.auth.message import HeaderFields, author
from app.auth.spf import check_mailfrom_and_helo
from app.auth.types import AuthOutcome
from app.dns import Resolver


async def authenticate(
    resolver: Resolver,
    *,
    authserv_id: str,
    remote_ip: str,
    helo: str,
    mail_from: str,
    message: bytes,
    fields: HeaderFields | None = None,
) -> AuthOutcome:
    """SPF, DKIM and DMARC results for a message received from `remote_ip`, and the
    Authentication-Results header field (under `authserv_id`, our host name) to prepend to it.

    `mail_from` is the MAIL FROM address ("" for the null sender); `message` the raw message as received,
    `fields` its header_fields when the caller has them already.
    """
    sender = author(message, fields)
    (spf_mailfrom, spf_helo), dkim, discovery = await asyncio.gather(
        check_mailfrom_and_helo(resolver, remote_ip, mail_from, helo),
        verify_all(resolver, message),
        discover_policy(resolver, sender.domain),
    )
    dmarc = await discovery.evaluate(spf_mailfrom, dkim)
    header = authentication_results(
        authserv_id, spf_mailfrom=spf_mailfrom, spf_helo=spf_helo, dkim=dkim, dmarc=dmarc
    )
    return AuthOutcome(
        spf_mailfrom=spf_mailfrom,
        spf_helo=spf_helo,
        dkim=dkim,
        dmarc=dmarc,
        from_address=sender.address,
        from_domain=sender.domain,
        authentication_results=header,
        verified_dkim_domains=list(dict.fromkeys(r.domain for r in dkim if r.status == "pass")),
    )
