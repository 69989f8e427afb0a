"""DKIM verification of every signature and signing, with keys generated here and the loopback DNS."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy

from app.auth import dkim as pwdkim
from app.auth.dkim import DKIMMessageError, DKIMSigningError, MessageParts, sign, signer, verify_all
from app.auth.dkimkeys import DKIMAlgorithm, dns_txt_value, generate_private_key_pem
from app.config import DKIMSelector
from app.dns import Resolver
from tests.support.dkimpeers import dkimpy_private_key, opendkim_verify
from tests.support.dnsserver import DNSTestServer

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Date: Wed, 25 Nov 2026 05:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n" + b"The numbers are in.\r\n" * 200
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[DKIMAlgorithm, Path]:
    folder = tmp_path_factory.mktemp("dkimkeys")
    paths: dict[DKIMAlgorithm, Path] = {}
    for algorithm in ("rsa", "ed25519"):
        paths[algorithm] = folder / f"{algorithm}.pem"
        paths[algorithm].write_bytes(generate_private_key_pem(algorithm))
    return paths


def selector(keys: dict[DKIMAlgorithm, Path], algorithm: DKIMAlgorithm, name: str = "") -> DKIMSelector:
    return DKIMSelector(
        selector=name or f"{algorithm}1", algorithm=algorithm, private_key_file=keys[algorithm]
    )


def publish(
    dns: DNSTestServer, keys: dict[DKIMAlgorithm, Path], algorithm: DKIMAlgorithm, **extra: str
) -> None:
    name = extra.pop("name", f"{algorithm}1._domainkey.example.com")
    value = dns_txt_value(keys[algorithm].read_bytes(), algorithm)
    dns.txt(name, "; ".join([value, *(f"{k}={v}" for k, v in extra.items())]))


def signed(keys: dict[DKIMAlgorithm, Path], *algorithms: DKIMAlgorithm, message: bytes = MESSAGE) -> bytes:
    return sign(message, "example.com", [selector(keys, a) for a in algorithms]) + message


@pytest.mark.parametrize(("algorithm", "a_tag"), [("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")])
async def test_signature_passes(
    dns: DNSTestServer,
    resolver: Resolver,
    keys: dict[DKIMAlgorithm, Path],
    algorithm: DKIMAlgorithm,
    a_tag: str,
) -> None:
    publish(dns, keys, algorithm)
    [result] = await verify_all(resolver, signed(keys, algorithm))
    assert (result.status, result.domain, result.selector, result.algorithm) == (
        "pass",
        "example.com",
        f"{algorithm}1",
        a_tag,
    )
    assert not result.has_length_limit
    assert result.key_services == ("*",)


async def test_every_signature_gets_its_own_result(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path]
) -> None:
    publish(dns, keys, "rsa")
    publish(dns, keys, "ed25519")
    message = signed(keys, "ed25519", "rsa")
    header = message.split(b"\r\n\r\n")[0]
    assert header.count(b"DKIM-Signature:") == 2
    assert b"c=relaxed/relaxed" in header
    results = await verify_all(resolver, message)
    assert [(r.status, r.selector) for r in results] == [("pass", "ed255191"), ("pass", "rsa1")]
    # dkimpy's own verifier, a second opinion, agrees on both.
    txt = {f"{a}1._domainkey.example.com.": dns_txt_value(keys[a].read_bytes(), a).encode() for a in keys}
    for index in (0, 1):
        verifier = dkim.DKIM(message)
        assert verifier.verify(idx=index, dnsfunc=lambda name, timeout=5: txt[name.decode()])


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda m: m.replace(b"The numbers are in.", b"The numbers are out", 1), "body hash mismatch"),
        (lambda m: m.replace(b"Subject: Quarterly", b"Subject: Yearly"), "did not verify"),
        (lambda m: m.replace(b"From: Alice <alice@", b"From: Mallory <alice@"), "did not verify"),
        # A second From field added above the signed one: From is oversigned, so this breaks it.
        (lambda m: b"From: evil@example.net\r\n" + m, "did not verify"),
        # Likewise for the other singleton fields, e.g. a second Subject.
        (lambda m: b"Subject: Pay this invoice\r\n" + m, "did not verify"),
    ],
)
async def test_tampered_message_fails(
    dns: DNSTestServer,
    resolver: Resolver,
    keys: dict[DKIMAlgorithm, Path],
    tamper: Callable[[bytes], bytes],
    reason: str,
) -> None:
    publish(dns, keys, "ed25519")
    [result] = await verify_all(resolver, tamper(signed(keys, "ed25519")))
    assert result.status == "fail"
    assert reason in result.reason


async def test_relaxed_canonicalization_tolerates_whitespace_changes(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path]
) -> None:
    publish(dns, keys, "rsa")
    message = signed(keys, "rsa").replace(b"Subject: Quarterly numbers", b"subject:   Quarterly  numbers ")
    [result] = await verify_all(resolver, message)
    assert result.status == "pass"


# Messages a signer must get right: long fields (folded, and one too long to fold), no CRLF at the end,
# 8-bit text in the header and body, and white space the relaxed rules change (tabs, runs of spaces,
# spaces at line ends, empty lines at the end). libopendkim wants a Date field (tests/support/dkimpeers.py).
AWKWARD_MESSAGES = {
    "plain": MESSAGE,
    "long fields": (
        b"From: Alice <alice@example.com>\r\nTo: "
        + b",\r\n\t".join(b"person%d@example.org" % i for i in range(120))
        + b"\r\nSubject: "
        + b" ".join([b"word"] * 400)
        + b"\r\nX-Unbroken: "
        + b"x" * 1500
        + b"\r\nDate: Wed, 25 Nov 2026 05:00:00 +0000\r\n\r\nBody.\r\n"
    ),
    # Short: libopendkim 2.11 mis-hashes a body without a final CRLF when one of opendkim-testmsg's
    # 1024-octet reads ends at a line end (OpenDKIM's own signatures fail then too). No white space at
    # the end: there relaxed dkimpy keeps a space that libopendkim drops (SMTP ends every body with CRLF).
    "no CRLF at the end": MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\nThe numbers are in.\r\nlast line",
    "8-bit": (
        b"From: =?utf-8?q?Ren=C3=A9e?= <renee@example.com>\r\nSubject: caf\xc3\xa9 \xe2\x82\xac\r\n"
        b"Date: Wed, 25 Nov 2026 05:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + b"Gr\xc3\xbc\xc3\x9fe, \xff\xfe\x80 bytes of no charset\r\n"
        * 50
    ),
    "white space": (
        b"From:  alice@example.com \r\nSubject:\tto  be\r\n\tcontinued \r\n"
        b"Date: Wed, 25 Nov 2026 05:00:00 +0000\r\n\r\n"
        b"\tindented \t and  spaced   \r\n \r\nline\t\r\n\r\n\r\n"
    ),
}
CANONICALIZATIONS = (b"relaxed/relaxed", b"simple/simple", b"relaxed/simple", b"simple/relaxed")


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signatures_are_dkimpys_to_the_byte(
    keys: dict[DKIMAlgorithm, Path], algorithm: DKIMAlgorithm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signing through OpenSSL gives the field dkimpy's own signer gives (both schemes are
    deterministic), with its tags, header list, folding and c=, for every message and canonicalization."""
    monkeypatch.setattr(time, "time", lambda: 1_796_000_000.5)  # both write t= from the clock
    private = dkimpy_private_key(keys[algorithm].read_bytes(), algorithm)
    for message in AWKWARD_MESSAGES.values():
        for canonicalization in CANONICALIZATIONS:
            ours = sign(
                message, "example.com", [selector(keys, algorithm)], canonicalization=canonicalization
            )
            signer = dkim.DKIM(message)
            signer.add_frozen((*dkim.DKIM.RFC5322_SINGLETON, b"subject"))
            theirs = signer.sign(
                f"{algorithm}1".encode(),
                b"example.com",
                private,
                signature_algorithm=b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256",
                canonicalize=tuple(canonicalization.split(b"/")),
                include_headers=signer.default_sign_headers(),
            )
            assert ours == theirs


# A message as a composer builds it (app/dmarcreports/mail.py): fields with a folded one, and a body.
COMPOSED = MessageParts(
    [
        (b"From", b" postmaster@mail.example.com\r\n"),
        (b"To", b" dmarc@example.org\r\n"),
        (b"Subject", b" Report Domain: example.org\r\n Submitter: mail.example.com\r\n Report-ID: <r1>\r\n"),
        (b"Date", b" Wed, 25 Nov 2026 05:00:00 +0000\r\n"),
        (b"Auto-Submitted", b" auto-generated\r\n"),
    ],
    b"--b\r\nContent-Type: text/plain\r\n\r\nThe numbers are in.\r\n--b--\r\n",
)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_a_composed_message_is_signed_as_its_octets_are(
    keys: dict[DKIMAlgorithm, Path], algorithm: DKIMAlgorithm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signing the fields a message was composed of, without parsing it, gives the field that signing
    its octets gives (which is dkimpy's, above), for every canonicalization."""
    monkeypatch.setattr(time, "time", lambda: 1_796_000_000.5)
    selectors = [selector(keys, algorithm)]
    keyed = signer("example.com", selectors)
    for canonicalization in CANONICALIZATIONS:
        from_octets = sign(COMPOSED.octets(), "example.com", selectors, canonicalization=canonicalization)
        assert keyed.sign(COMPOSED, canonicalization=canonicalization) == from_octets
    assert COMPOSED.octets().startswith(b"From: postmaster@mail.example.com\r\nTo: ")
    assert b"Report-ID: <r1>\r\nDate: " in COMPOSED.octets()


def test_a_signer_reads_its_keys_once_and_the_next_one_reads_a_replaced_file(tmp_path: Path) -> None:
    """A job signs a run's messages with one Signer: the key files are not read again per message,
    and the next run's Signer uses a key file replaced meanwhile."""
    path = tmp_path / "key.pem"
    path.write_bytes(generate_private_key_pem("ed25519"))
    key = DKIMSelector(selector="x", algorithm="ed25519", private_key_file=path)
    first = signer("example.com", [key])
    path.unlink()
    assert b"DKIM-Signature: " in first.sign(COMPOSED), "signs with the key it loaded"
    with pytest.raises(DKIMSigningError, match=r"key\.pem"):
        signer("example.com", [key])
    path.write_bytes(generate_private_key_pem("ed25519"))
    second = signer("example.com", [key])
    assert first.sign(COMPOSED).split(b"b=")[-1] != second.sign(COMPOSED).split(b"b=")[-1]


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signatures_verify_in_dkimpy_and_opendkim(
    keys: dict[DKIMAlgorithm, Path], algorithm: DKIMAlgorithm, tmp_path: Path
) -> None:
    name = f"{algorithm}1._domainkey.example.com"
    records = {name: dns_txt_value(keys[algorithm].read_bytes(), algorithm)}
    signed_messages = [
        sign(message, "example.com", [selector(keys, algorithm)], canonicalization=canonicalization) + message
        for message in AWKWARD_MESSAGES.values()
        for canonicalization in CANONICALIZATIONS
    ]

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records[name.decode().rstrip(".")].encode()

    assert all(dkim.verify(message, dnsfunc=lookup) for message in signed_messages)
    # A changed body must fail in both, or a pass would prove nothing.
    tampered = signed_messages[0].replace(b"The numbers are in.", b"The numbers are up.", 1)
    assert not dkim.verify(tampered, dnsfunc=lookup)
    verdicts = opendkim_verify([*signed_messages, tampered], records, tmp_path)
    labels = [f"{m} {c.decode()}" for m in AWKWARD_MESSAGES for c in CANONICALIZATIONS]
    assert dict(zip(labels, verdicts[:-1], strict=True)) == dict.fromkeys(labels, (0, ""))
    assert verdicts[-1] == (70, "opendkim-testmsg: dkim_eom(): Bad signature")


def test_relaxed_body_shortcut_is_dkimpys_canonicalization() -> None:
    """The shortcut taken for bodies whose white space relaxed canonicalization leaves alone."""
    pieces = [b"a", b"b", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"\xff"]
    rng = random.Random(14)
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    bodies = [b"", b"\r\n", b"a", b"a ", b"a\r\n\r\n", b" \r\n"]
    bodies += [b"".join(rng.choices(pieces, k=rng.randrange(1, 30))) for _ in range(3000)]
    for body in bodies:
        assert pwdkim._canonical_body(relaxed, body) == relaxed.canonicalize_body(body), body


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (None, "no key record"),
        ("v=DKIM1; k=rsa; p=", "revoked"),
        ("v=DKIM1; k=ed25519; p=bm90IGEga2V5", "invalid"),  # not 32 octets
        ("v=DKIM1; k=ed25519; p=!!!notbase64", "invalid"),
        ("v=DKIM2; k=ed25519; p={p}", "invalid"),
        ("v=DKIM1; k=rsa; p={p}", "does not match"),  # an ed25519 key published as RSA
        ("v=DKIM1; k=ed25519; h=sha1; p={p}", "h="),
        ("v=DKIM1; k=ed25519; t=s; p={p}", "t=s"),
        ("v=DKIM1; k=ed25519 p={p}", "no p="),  # a space is not a separator
    ],
)
async def test_key_problems_are_permerror(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path], record: str | None, reason: str
) -> None:
    public = dns_txt_value(keys["ed25519"].read_bytes(), "ed25519").rpartition("p=")[2]
    if record is not None:
        dns.txt("ed25519sub._domainkey.example.com", record.replace("{p}", public))
    message = sign(MESSAGE, "example.com", [selector(keys, "ed25519", "ed25519sub")]) + MESSAGE
    message = message.replace(b"i=@example.com", b"i=@news.example.com")  # only to exercise t=s
    [result] = await verify_all(resolver, message)
    assert result.status == "permerror"
    assert reason in result.reason
    assert (result.domain, result.selector) == ("example.com", "ed25519sub")


async def test_key_services(dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path]) -> None:
    publish(dns, keys, "ed25519", s="email")
    [result] = await verify_all(resolver, signed(keys, "ed25519"))
    assert (result.status, result.key_services) == ("pass", ("email",))
    dns.clear()
    publish(dns, keys, "ed25519", s="tlsrpt")
    [result] = await verify_all(resolver, signed(keys, "ed25519"))
    # A key only for TLS reports verifies, but is not acceptable for email in general.
    assert (result.status, result.key_services) == ("policy", ("tlsrpt",))
    dns.clear()
    publish(dns, keys, "ed25519", s="email:tlsrpt")  # a list (dkimpy alone would drop such a key)
    [result] = await verify_all(resolver, signed(keys, "ed25519"))
    assert (result.status, result.key_services) == ("pass", ("email", "tlsrpt"))


async def test_key_lookup_timeout_is_temperror(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path]
) -> None:
    dns.timeout("rsa1._domainkey.example.com")
    publish(dns, keys, "ed25519")
    results = await verify_all(resolver, signed(keys, "rsa", "ed25519"))
    assert [r.status for r in results] == ["temperror", "pass"]
    dns.servfail("ed25519x._domainkey.example.com")
    message = sign(MESSAGE, "example.com", [selector(keys, "ed25519", "ed25519x")]) + MESSAGE
    assert [r.status for r in await verify_all(resolver, message)] == ["temperror"]


async def test_keys_are_looked_up_concurrently(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path]
) -> None:
    dns.timeout("rsa1._domainkey.example.com")
    dns.timeout("ed255191._domainkey.example.com")
    started = time.monotonic()
    results = await verify_all(resolver, signed(keys, "rsa", "ed25519"))
    assert [r.status for r in results] == ["temperror", "temperror"]
    assert time.monotonic() - started < 1.7  # one after the other, the two 1 s timeouts take 2 s


@pytest.mark.parametrize(
    ("header", "domain", "selector_name"),
    [
        (
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AAAA\r\n",
            "example.com",
            "sel",
        ),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; d=x.example; s=sel\r\n", "example.com", "sel"),
        (
            b"DKIM-Signature: v=1; a=rsa-md5; d=example.com; s=s; h=from; bh=AAAA; b=AAAA\r\n",
            "example.com",
            "s",
        ),
        (b"DKIM-Signature: garbage without tags\r\n", "", ""),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=exa mple.com; s=s; h=from; bh=AAAA; b=AAAA\r\n", "", "s"),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=a;b; h=from; bh=AAAA; b=AAAA\r\n", "", ""),
    ],
)
async def test_broken_signature_is_permerror(
    dns: DNSTestServer, resolver: Resolver, header: bytes, domain: str, selector_name: str
) -> None:
    [result] = await verify_all(resolver, header + MESSAGE)
    assert result.status == "permerror"
    assert result.reason
    if domain:
        assert (result.domain, result.selector) == (domain, selector_name)
    assert not [q for q in dns.queries if "_domainkey" in q[0]]


async def test_rsa_sha1_is_not_accepted(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path]
) -> None:
    publish(dns, keys, "rsa")
    private = dkimpy_private_key(keys["rsa"].read_bytes(), "rsa")
    header = dkim.sign(MESSAGE, b"rsa1", b"example.com", private, signature_algorithm=b"rsa-sha1")
    [result] = await verify_all(resolver, header + MESSAGE)
    assert (result.status, result.algorithm) == ("permerror", "rsa-sha1")
    assert "not accepted" in result.reason


async def test_length_limit_is_reported(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path]
) -> None:
    publish(dns, keys, "rsa")
    private = dkimpy_private_key(keys["rsa"].read_bytes(), "rsa")
    header = dkim.sign(MESSAGE, b"rsa1", b"example.com", private, length=True)
    [result] = await verify_all(resolver, header + MESSAGE + b"appended by a list\r\n")
    assert (result.status, result.has_length_limit) == ("pass", True)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\r\n\r\n",
        b"not a header line\r\nDKIM-Signature: v=1; d=example.com; s=x\r\n\r\nbody",
        b" continuation first\r\nDKIM-Signature: v=1; d=example.com; s=x\r\n\r\nbody",
        b"DKIM-Signature: v=1; d=example.com; s=x\r\n\xff\xfe\x00junk\r\n\r\nbody",
        b"DKIM-Signature:\r\n\r\n",
        b"DKIM-Signature: v=1; a=ed25519-sha256; d=\xc3\xa9.example; s=x; h=from; bh=AAAA; b=AAAA\r\n\r\n",
        os.urandom(4096),
    ],
)
async def test_malformed_messages_never_raise(dns: DNSTestServer, resolver: Resolver, message: bytes) -> None:
    results = await verify_all(resolver, message)
    assert all(r.status in ("permerror", "fail", "neutral") for r in results)
    if b"DKIM-Signature: v=1; d=example.com" in message:
        assert [(r.status, r.domain, r.selector) for r in results] == [("permerror", "example.com", "x")]


async def test_unsigned_message_has_no_results(resolver: Resolver) -> None:
    assert await verify_all(resolver, MESSAGE) == []


async def test_signature_count_is_limited(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path]
) -> None:
    selectors = [selector(keys, "ed25519", f"s{i}") for i in range(12)]
    for i in range(12):
        publish(dns, keys, "ed25519", name=f"s{i}._domainkey.example.com")
    results = await verify_all(resolver, sign(MESSAGE, "example.com", selectors) + MESSAGE)
    assert [r.status for r in results] == ["pass"] * 10 + ["neutral"] * 2
    assert len([q for q in dns.queries if "_domainkey" in q[0]]) == 10


def test_signing_errors_are_clear(tmp_path: Path, keys: dict[DKIMAlgorithm, Path]) -> None:
    missing = DKIMSelector(selector="x", algorithm="rsa", private_key_file=tmp_path / "missing.pem")
    with pytest.raises(DKIMSigningError, match=r"missing\.pem"):
        sign(MESSAGE, "example.com", [missing])
    wrong = DKIMSelector(selector="x", algorithm="rsa", private_key_file=keys["ed25519"])
    with pytest.raises(DKIMSigningError, match=r"ed25519\.pem"):
        sign(MESSAGE, "example.com", [wrong])
    with pytest.raises(DKIMSigningError, match="From"):
        sign(b"Subject: no author\r\n\r\nbody\r\n", "example.com", [selector(keys, "rsa")])
    with pytest.raises(DKIMSigningError, match="not a valid domain"):
        sign(MESSAGE, "exa mple.com", [selector(keys, "rsa")])


def test_signing_keys_are_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(generate_private_key_pem("ed25519"))
    key = DKIMSelector(selector="x", algorithm="ed25519", private_key_file=path)
    sign(MESSAGE, "example.com", [key])
    before = pwdkim._load_private_key.cache_info()
    first = sign(MESSAGE, "example.com", [key])
    after = pwdkim._load_private_key.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)

    path.write_bytes(generate_private_key_pem("ed25519"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    second = sign(MESSAGE, "example.com", [key])
    assert pwdkim._load_private_key.cache_info().misses == after.misses + 1
    assert first.split(b"b=")[-1] != second.split(b"b=")[-1]


def test_a_malformed_header_is_a_message_error_not_a_key_error(
    tmp_path: Path, keys: dict[DKIMAlgorithm, Path]
) -> None:
    """Issue 9: the caller answers a message error permanently (5xx) and a key problem with a 4xx."""
    malformed = b"From: alice@example.com\r\nnot a field\r\n\r\nbody\r\n"
    with pytest.raises(DKIMMessageError, match="header line 2 is not a header field"):
        sign(malformed, "example.com", [selector(keys, "rsa")])
    missing = DKIMSelector(selector="x", algorithm="rsa", private_key_file=tmp_path / "missing.pem")
    with pytest.raises(DKIMSigningError) as raised:
        sign(MESSAGE, "example.com", [missing])
    assert not isinstance(raised.value, DKIMMessageError)


def tampered(message: bytes) -> list[bytes]:
    """The message and ways a relay or forger might change it: a body octet, a signed header's
    value, its white space (relaxed tolerates that), a line added at the end, a second From."""
    head, _, body = message.partition(b"\r\n\r\n")
    variants = [
        message,
        head + b"\r\n\r\n" + body + b"added by a list\r\n",
        b"From: x@evil.example\r\n" + message,
    ]
    if body:
        flipped = bytes([body[len(body) // 2] ^ 0x01])
        variants.append(head + b"\r\n\r\n" + body[: len(body) // 2] + flipped + body[len(body) // 2 + 1 :])
    variants.append(message.replace(b"Date: Wed", b"Date: Thu", 1))
    variants.append(message.replace(b"Date: Wed, 25", b"Date:  Wed,\t25", 1))
    return variants


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_every_verdict_is_dkimpys(
    dns: DNSTestServer, resolver: Resolver, keys: dict[DKIMAlgorithm, Path], algorithm: DKIMAlgorithm
) -> None:
    """Signatures checked through OpenSSL pass and fail where dkimpy's own verifier passes and fails:
    every awkward message, every canonicalization, each one as signed and tampered with."""
    publish(dns, keys, algorithm)
    txt = {f"{algorithm}1._domainkey.example.com.": dns_txt_value(keys[algorithm].read_bytes(), algorithm)}
    verdicts = {True: 0, False: 0}
    for message in AWKWARD_MESSAGES.values():
        for canonicalization in CANONICALIZATIONS:
            header = sign(
                message, "example.com", [selector(keys, algorithm)], canonicalization=canonicalization
            )
            for variant in tampered(header + message):
                [result] = await verify_all(resolver, variant)
                theirs = dkimpy_verifies(variant, txt)
                assert (result.status == "pass") == theirs, (canonicalization, variant[:300], result)
                assert result.status in ("pass", "fail")
                verdicts[theirs] += 1
    assert verdicts[True] > 20 and verdicts[False] > 20  # both kinds of verdict were compared


def dkimpy_verifies(message: bytes, txt: dict[str, str]) -> bool:
    try:
        return bool(dkim.DKIM(message).verify(dnsfunc=lambda name, timeout=5: txt[name.decode()].encode()))
    except dkim.ValidationError:  # dkimpy raises a body hash mismatch
        return False


def test_a_small_rsa_key_is_a_permerror_only_when_its_signature_is_valid() -> None:
    """RFC 8301 3.2, as dkimpy had it: a valid signature by a key below 1024 bits is a permerror; an
    invalid one fails; a key too small for the SHA-256 DigestInfo cannot verify anything."""
    digest = b"\x01" * 32
    small = small_rsa_key(768)  # `cryptography` makes none below 1024 bits
    signature = pwdkim._signature(small, digest)
    with pytest.raises(dkim.KeyFormatError, match="too small"):
        pwdkim._verified(small.public_key(), 768, signature, digest)
    assert not pwdkim._verified(small.public_key(), 768, signature, b"\x02" * 32)
    tiny = rsa.RSAPublicNumbers(65537, (1 << 487) | 1).public_key()
    with pytest.raises(dkim.KeyFormatError, match="digest too large"):
        pwdkim._verified(tiny, 488, b"\x00" * 61, digest)


def small_rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """An RSA key of `bits` bits from two random primes (Miller-Rabin, 40 rounds)."""
    rng = random.Random(bits)

    def prime(size: int) -> int:
        while True:
            candidate = rng.getrandbits(size) | (3 << (size - 2)) | 1
            if all(_passes_miller_rabin(candidate, rng.randrange(2, candidate - 1)) for _ in range(40)):
                return candidate

    e = 65537
    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            break
    d = pow(e, -1, phi)
    public = rsa.RSAPublicNumbers(e, p * q)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), public
    )
    return numbers.private_key()


def _passes_miller_rabin(n: int, witness: int) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    x = pow(witness, d, n)
    if x in (1, n - 1):
        return True
    for _ in range(r - 1):
        x = pow(x, 2, n)
        if x == n - 1:
            return True
    return False
