"""Properties of the strict address check (app/address.py) on any text: it raises only AddressError,
and an address it passes may go into an SMTP command, a header field, a log line or a column as it is."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.address import (
    MAX_ADDRESS,
    MAX_LOCAL_PART,
    AddressError,
    NeedsSMTPUTF8,
    normalize_address,
    validate_address,
)
from tests.property.bounds import LARGE, LARGE_INPUT_SECONDS, finishes_within
from tests.property.strategies import address, domain, hostile_text, joined, localpart, repeated

ADDRESS_PARTS = ("@", ".", '"', "\\", " ", "[", "]", "IPv6:", "..", "-", "xn--", "\u00e9", "\u0130", "\u212a")
address_text = st.one_of(
    address,
    hostile_text,
    joined(st.one_of(st.sampled_from(ADDRESS_PARTS), localpart, domain, hostile_text), st.just("")),
    st.builds("{}@{}".format, hostile_text, domain),
    st.builds("{}@{}".format, localpart, hostile_text),
)
LDH_DOMAIN = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")


@given(address_text, st.booleans())
@example("\udcff@example.org", True)  # aiosmtpd's surrogateescape for an invalid UTF-8 octet
@example("a\u202eb@example.org", True)  # a bidi override
@example("a@ex\u2028ample.org", True)
def test_check_raises_only_its_own_error(text: str, smtputf8: bool) -> None:
    try:
        valid = validate_address(text, smtputf8=smtputf8)
    except NeedsSMTPUTF8:
        assert not smtputf8 and not text.isascii()
        return
    except AddressError as e:
        # The reason goes into SMTP replies: it never repeats the address, so it is plain text.
        assert str(e).isascii() and str(e).isprintable()
        return
    local, _, host = valid.rpartition("@")
    assert valid.isprintable() and (smtputf8 or valid.isascii())
    assert len(valid.encode()) <= MAX_ADDRESS and len(local.encode()) <= MAX_LOCAL_PART
    assert valid == normalize_address(text) and host == host.lower()
    assert not host.isascii() or LDH_DOMAIN.fullmatch(host)
    assert validate_address(valid, smtputf8=smtputf8) == valid  # a checked address stays valid


@given(localpart, domain)
def test_well_formed_addresses_pass_with_the_domain_in_lower_case(local: str, host: str) -> None:
    text = f"{local}@{host.upper()}"
    if len(text) <= MAX_ADDRESS:
        assert validate_address(text) == f"{local}@{host}"


@settings(max_examples=max(10, settings().max_examples // 4))  # large inputs: fewer
@given(repeated(st.one_of(st.sampled_from(ADDRESS_PARTS), localpart, domain), LARGE))
def test_long_text_is_checked_quickly(text: str) -> None:
    with finishes_within(LARGE_INPUT_SECONDS):
        try:
            validate_address(text, smtputf8=True)
        except AddressError:
            return
