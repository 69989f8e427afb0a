"""The strict address check (app/address.py) and the EHLO/HELO argument check, case by case."""

from __future__ import annotations

import pytest

from app.address import (
    AddressError,
    NeedsSMTPUTF8,
    address_domain,
    address_field,
    address_key,
    normalize_address,
    validate_address,
)
from app.smtpserver.greeting import greeting_problem
from tests.support.hostile import CONTROLS


@pytest.mark.parametrize(
    ("address", "normalised"),
    [
        ("a@b.example", "a@b.example"),
        ("First.Last+tag@Example.ORG", "First.Last+tag@example.org"),
        ("!#$%&'*+-/=?^_`{|}~@x.example", "!#$%&'*+-/=?^_`{|}~@x.example"),
        ('"a b"@x.example', '"a b"@x.example'),
        ('"a\\"b@c"@x.example', '"a\\"b@c"@x.example'),
        ("postmaster@localhost", "postmaster@localhost"),
        ("a@xn--bcher-kva.example", "a@xn--bcher-kva.example"),
        ("x" * 64 + "@" + "d" * 63 + ".example", "x" * 64 + "@" + "d" * 63 + ".example"),
    ],
)
def test_valid_addresses(address: str, normalised: str) -> None:
    assert validate_address(address) == normalised


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("nobody", "form local-part@domain"),
        ("@x.example", "form local-part@domain"),
        ("a@", "form local-part@domain"),
        ("a..b@x.example", "dot-atom or a quoted string"),
        (".a@x.example", "dot-atom or a quoted string"),
        ("a b@x.example", "dot-atom or a quoted string"),
        ('""@x.example', "dot-atom or a quoted string"),
        ("a<b>@x.example", "dot-atom or a quoted string"),
        ("a@-x.example", "host name"),
        ("a@x_y.example", "host name"),
        ("a@x..example", "host name"),
        ("a@x.example.", "host name"),
        ("a@" + "d" * 64 + ".example", "host name"),
        ("a@192.0.2.1", "all digits"),
        ("a@[192.0.2.1]", "address literals"),
        ("x" * 65 + "@x.example", "longer than 64"),
        ("a@" + ".".join(["bücher"] * 30), "IDNA"),  # 239 octets, but 419 as A-labels
        ("x" * 60 + "@" + ".".join(["d" * 60] * 4) + ".example", "longer than 254"),
        ("a\u00a0b@x.example", "unprintable"),
        ("a\u200db@x.example", "unprintable"),
        ("a\u202eb@x.example", "unprintable"),
    ],
)
def test_invalid_addresses(address: str, problem: str) -> None:
    with pytest.raises(AddressError, match=problem) as refused:
        validate_address(address, smtputf8=True)
    assert address not in str(refused.value), "the message never repeats the address"


@pytest.mark.parametrize("name", CONTROLS)
@pytest.mark.parametrize("where", ["local", "domain", "quoted"])
def test_control_characters_are_refused_anywhere(name: str, where: str) -> None:
    c = CONTROLS[name]
    address = {"local": f"a{c}b@x.example", "domain": f"a@x{c}.example", "quoted": f'"a{c}b"@x.example'}[
        where
    ]
    with pytest.raises(AddressError, match="control character"):
        validate_address(address, smtputf8=True)


def test_non_ascii_only_with_smtputf8() -> None:
    for address in ("jöran@example.org", "a@bücher.example"):
        with pytest.raises(NeedsSMTPUTF8):
            validate_address(address)
        assert validate_address(address, smtputf8=True) == address
    with pytest.raises(AddressError, match="IDNA"):
        validate_address("a@bü--cher.example", smtputf8=True)


def test_address_field_checks_every_address() -> None:
    assert address_field(["a@b.example", '"x y"@c.example']) == 'a@b.example, "x y"@c.example'
    with pytest.raises(AddressError):
        address_field(["a@b.example", "x\r\nBcc: e@evil.example"])


@pytest.mark.parametrize(
    "argument",
    [
        "mail.example.org",
        "localhost",
        "client_pc",
        "host.example.",
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
        "[x-tag:a]",
    ],
)
def test_greeting_arguments_taken(argument: str) -> None:
    assert greeting_problem("EHLO", argument) is None


@pytest.mark.parametrize(
    "argument",
    [
        "a b",
        "-host.example",
        "host..example",
        "[192.0.2.300]",
        "[IPv6:zz]",
        "[]",
        "hôte.example",
        "a" * 256,
        "h\x1b",
    ],
)
def test_greeting_arguments_refused_without_echo(argument: str) -> None:
    problem = greeting_problem("HELO", argument)
    assert problem is not None and problem.startswith("501 Syntax: HELO") and argument not in problem


@pytest.mark.parametrize(
    ("address", "normalised", "key", "domain"),
    [
        ("Admin@Example.ORG", "Admin@example.org", "admin@example.org", "example.org"),
        ('"A B"@x.EXAMPLE', '"A B"@x.example', '"a b"@x.example', "x.example"),
        ("a@b@C.example", "a@b@c.example", "a@b@c.example", "c.example"),
        ("Postmaster", "@postmaster", "postmaster", "postmaster"),
        ("", "@", "", ""),
    ],
)
def test_the_three_views_of_an_address(address: str, normalised: str, key: str, domain: str) -> None:
    """normalize_address keeps the local part's case (what is stored and sent), address_key folds it
    (case-insensitive matching only), address_domain is the domain alone; all split at the last "@"."""
    assert normalize_address(address) == normalised
    assert address_key(address) == key
    assert address_domain(address) == domain
