"""The organizational domain by the public suffix list, for the sent-recipient record (SPEC R3.4 b, c).

DMARC finds its organizational domain by the DNS tree walk of RFC 9989 (app/auth/dmarc.py); this is
the list-based one, which needs no lookups and is what reputation compares recipients by.
"""

from __future__ import annotations

from functools import cache

from publicsuffixlist import PublicSuffixList


@cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # parsing the list takes a while: once per process


def psl_organizational_domain(domain: str) -> str:
    """The registrable domain per the public suffix list (the domain itself if it is a suffix)."""
    return _public_suffixes().privatesuffix(domain) or domain


def is_public_suffix(domain: str) -> bool:
    """Whether `domain` is a public suffix (a TLD, co.uk, ...; an unlisted TLD counts as one)."""
    return bool(_public_suffixes().is_public(domain))
