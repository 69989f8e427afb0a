"""DKIM (RFC 6376, RFC 8463 ed25519, RFC 8301 crypto rules): verify every signature, sign outgoing mail.

Verification drives dkimpy per signature so each one gets its own result: the keys of all signatures are
looked up concurrently through app/dns.py (the resolver's `dkim_txt`, as for dkimpy's async support),
then every signature is checked by dkimpy's canonicalization and crypto code. Key records are judged
here, so a missing, revoked or unsuitable key is a permerror with a reason instead of a bare False.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from app.auth.dkimkeys import DKIMAlgorithm, DKIMKeyError, dkimpy_private_key
from app.auth.message import ascii_domain, header_fields, header_section
from app.auth.types import DKIMResult, DKIMStatus
from app.config import DKIMSelector
from app.dns import DNSError, DNSTemporaryError, Resolver

MAX_SIGNATURES = 10  # RFC 6376 6.1: verifiers may limit how many signatures they check
MIN_RSA_BITS = 1024  # RFC 8301 3.2
_KEY_TYPE_OF_ALGORITHM = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519"}
_SIGNING_ALGORITHMS: dict[DKIMAlgorithm, bytes] = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
_SELECTOR = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_-]{1,63})*$")
# dkimpy's own parsers raise these (besides DKIMException) on hostile input.
_PARSE_ERRORS = (dkim.DKIMException, InvalidTagValueList, IndexError, ValueError, TypeError, KeyError)
# The start of a header field (RFC 5322 2.2: a name of printable ASCII but the colon, then the colon;
# white space before it is obsolete syntax, 4.5.3), and of a header line (CRLF or a bare LF).
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_HEADER_LINE = re.compile(rb"\r?\n")

_log = logging.getLogger(__name__)


class DKIMSigningError(Exception):
    """A message cannot be signed with the configured keys; the message names the key file or reason."""


class DKIMMessageError(DKIMSigningError):
    """The message's own header section cannot be signed: the sender must change it, a retry cannot
    help. The text is ours (no message text in it)."""


def header_problem(message: bytes) -> str | None:
    """Why the header section is not a list of header fields (which DKIM signers refuse), or None."""
    lines = _HEADER_LINE.split(header_section(message))
    for number, line in enumerate(lines, start=1):
        if line[:1] in (b" ", b"\t"):
            if number == 1:
                return "the first header line starts with white space, so it continues no field"
        elif line and not _FIELD_START.match(line):
            return (
                f"header line {number} is not a header field: it must start with a name of printable "
                "ASCII characters and a colon"
            )
    return None


# Verification.


@dataclass
class _Signature:
    """One DKIM-Signature header field, checked for syntax and ready for its key."""

    tags: dict[bytes, bytes]
    include_headers: list[bytes]
    header: tuple[bytes, bytes]
    domain: str
    selector: str
    algorithm: str

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def result(self, status: DKIMStatus, reason: str = "", services: tuple[str, ...] = ("*",)) -> DKIMResult:
        return DKIMResult(
            status,
            self.domain,
            self.selector,
            self.algorithm,
            reason,
            has_length_limit=b"l" in self.tags,
            key_services=services,
        )


@dataclass(frozen=True)
class _Key:
    """A key record judged for use with one signature."""

    services: tuple[str, ...]
    problem: str = ""  # why the key cannot verify the signature (a permerror)
    pk: object = None
    keysize: int = 0
    ktag: bytes = b""


async def verify_all(resolver: Resolver, message: bytes) -> list[DKIMResult]:
    """One result per DKIM-Signature header field, in message order; [] for an unsigned message.

    Never raises for a malformed message: what cannot be checked is a permerror with a reason.
    """
    if b"dkim-signature" not in header_section(message).lower():
        return []
    try:
        verifier = dkim.DKIM(message, logger=_log, minkey=MIN_RSA_BITS)
    except _PARSE_ERRORS as e:
        return _unparseable(message, f"message header cannot be parsed: {_text(e)}")
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    prepared = [_prepare(verifier, i) for i in range(min(count, MAX_SIGNATURES))]
    names = {p.key_name for p in prepared if isinstance(p, _Signature)}
    records = dict(zip(names, await asyncio.gather(*(_fetch_key(resolver, n) for n in names)), strict=True))
    results = [
        p if isinstance(p, DKIMResult) else _verify(verifier, p, records[p.key_name]) for p in prepared
    ]
    skipped = DKIMResult("neutral", "", "", reason=f"not checked: more than {MAX_SIGNATURES} signatures")
    return results + [skipped] * (count - len(prepared))


def _unparseable(message: bytes, reason: str) -> list[DKIMResult]:
    fields = header_fields(message)
    return [_broken(value, reason) for name, value in fields if name.lower() == "dkim-signature"]


def _broken(value: str, reason: str) -> DKIMResult:
    """The permerror of a signature dkimpy could not take, with what can be read of d=, s= and a=."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, _, tag_value = part.partition("=")
        tags.setdefault(name.strip(), re.sub(r"\s+", "", tag_value))
    return DKIMResult("permerror", tags.get("d", "").lower(), tags.get("s", ""), tags.get("a", ""), reason)


def _prepare(verifier: dkim.DKIM, index: int) -> _Signature | DKIMResult:
    try:
        prep = verifier.verify_headerprep(index)
    except _PARSE_ERRORS as e:
        values = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
        return _broken(values[index].decode("utf-8", "replace"), f"signature is invalid: {_text(e)}")
    sig, include_headers, sigheaders = prep
    algorithm = sig[b"a"].decode("ascii", "replace").lower()
    domain = ascii_domain(sig[b"d"].decode("utf-8", "replace"))
    selector = sig[b"s"].decode("utf-8", "replace")
    signature = _Signature(sig, include_headers, sigheaders[index], domain, selector, algorithm)
    if not domain:
        return signature.result("permerror", f"invalid d= {_text(sig[b'd'])}")
    if not _SELECTOR.match(selector):
        return signature.result("permerror", f"invalid s= {selector!r}")
    if sig[b"a"].lower() not in _KEY_TYPE_OF_ALGORITHM:
        # RFC 8301 3.1: rsa-sha1 signatures must not be considered valid.
        return signature.result("permerror", f"signature algorithm {algorithm} is not accepted")
    return signature


async def _fetch_key(resolver: Resolver, name: str) -> bytes | DNSError | None:
    try:
        return await resolver.dkim_txt(name)
    except DNSError as e:
        return e


def _judge_key(name: str, record: bytes, signature: _Signature) -> _Key:
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList as e:
        return _Key(("*",), f"key record is invalid: {_text(e)}")
    services = tuple(s.strip() for s in tags.get(b"s", b"*").decode("ascii", "replace").split(":"))
    key = functools.partial(_Key, services)
    if b"p" not in tags:
        return key("key record has no p=")
    if not tags[b"p"].strip():
        return key("key is revoked (empty p=)")
    wanted = _KEY_TYPE_OF_ALGORITHM[signature.tags[b"a"].lower()]
    if tags.get(b"k", b"rsa").strip().lower() != wanted:
        return key(f"key type {_text(tags.get(b'k', b'rsa'))} does not match a={signature.algorithm}")
    hashes = tags.get(b"h")
    if hashes is not None and b"sha256" not in [h.strip().lower() for h in hashes.split(b":")]:
        return key(f"key record h= {_text(hashes)} does not allow sha256")
    flags = [f.strip() for f in tags.get(b"t", b"").split(b":")]
    identity = signature.tags.get(b"i", b"").rpartition(b"@")[2].lower()
    if b"s" in flags and identity and identity != signature.tags[b"d"].lower():
        return key("key record t=s forbids a subdomain in i=")
    # dkimpy knows s= only as one of "*", "email" or "tlsrpt" and drops the key for a list such as
    # "email:tlsrpt" (RFC 6376 3.6.1 allows one): the services are judged above, so it gets none.
    without_services = b";".join(k + b"=" + v for k, v in tags.items() if k != b"s")
    try:
        pk, keysize, ktag = _public_key(name.encode(), without_services)
    except _PARSE_ERRORS as e:
        return key(f"key record is invalid: {_text(e)}")
    return key(pk=pk, keysize=keysize, ktag=ktag)


@functools.lru_cache(maxsize=1024)
def _public_key(name: bytes, record: bytes) -> tuple[object, int, bytes]:
    """dkimpy's key from a record, cached per record text: it decodes the key's ASN.1 in pure Python,
    and a busy sender's mail all names the same few keys (verification only reads the key)."""
    pk, keysize, ktag, _ = dkim.evaluate_pk(name, record)
    return pk, keysize, ktag


def _verify(verifier: dkim.DKIM, signature: _Signature, record: bytes | DNSError | None) -> DKIMResult:
    if isinstance(record, DNSTemporaryError):
        return signature.result("temperror", f"key lookup failed: {record}")
    if isinstance(record, DNSError) or record is None:
        return signature.result("permerror", f"no key record at {signature.key_name}")
    key = _judge_key(signature.key_name, record, signature)
    if key.problem:
        return signature.result("permerror", key.problem, key.services)
    verifier.pk, verifier.keysize, verifier.ktag = key.pk, key.keysize, key.ktag
    verifier.seqtlsrpt = False  # the service type is judged below, not by dkimpy
    try:
        valid = verifier.verify_sig_process(
            signature.tags, list(signature.include_headers), signature.header, None
        )
    except dkim.ValidationError as e:  # the only one verify_sig_process raises is a body hash mismatch
        return signature.result("fail", _text(e), key.services)
    except _PARSE_ERRORS as e:
        return signature.result("permerror", _text(e), key.services)
    if not valid:
        return signature.result("fail", "signature did not verify", key.services)
    if not {"*", "email"} & set(key.services):
        # RFC 6376 3.6.1: a key not for email must not verify mail; a TLS report (RFC 8460) may use it.
        return signature.result("policy", f"key is for {':'.join(key.services)}, not email", key.services)
    return signature.result("pass", services=key.services)


def _text(value: object) -> str:
    """Printable text of an error or tag value for a reason (reasons end up in header fields)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = re.sub(r"[^\x20-\x7e]+", " ", text).strip()
    return text if len(text) <= 120 else text[:117] + "..."


# Signing.


def sign(
    message: bytes, domain: str, selectors: Sequence[DKIMSelector], extra_headers: Sequence[bytes] = ()
) -> bytes:
    """DKIM-Signature header fields (one per selector, relaxed/relaxed) to prepend to `message`.

    `extra_headers` names header fields to sign besides RFC 6376's recommended ones (e.g. the RFC 8460
    TLS-Report-Domain); singleton fields are signed once more than present, so none can be added.
    """
    signing_domain = ascii_domain(domain)
    if not signing_domain:
        raise DKIMSigningError(f"cannot sign for {domain!r}: not a valid domain name")
    problem = header_problem(message)
    if problem is not None:
        raise DKIMMessageError(problem)
    try:
        signer = dkim.DKIM(message, logger=_log)
    except _PARSE_ERRORS as e:
        _log.warning("dkimpy cannot parse a message header: %s", _text(e))
        raise DKIMMessageError("the header section cannot be parsed for DKIM signing") from None
    # Fields a message has at most once (RFC 5322 3.6; dkimpy's list lacks Subject) are oversigned.
    signer.add_frozen((*dkim.DKIM.RFC5322_SINGLETON, b"subject"))
    include = signer.default_sign_headers() + [h.lower() for h in extra_headers]
    lines = []
    for selector in selectors:
        failure = f"cannot sign for {domain} with selector {selector.selector}"
        key = _private_key(Path(selector.private_key_file), selector.algorithm)
        try:
            lines.append(
                signer.sign(
                    selector.selector.encode("ascii"),
                    signing_domain.encode("ascii"),
                    key,
                    signature_algorithm=_SIGNING_ALGORITHMS[selector.algorithm],
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=include,
                )
            )
        except _PARSE_ERRORS as e:
            raise DKIMSigningError(f"{failure}: {e}") from None
    return b"".join(lines)


def _private_key(path: Path, algorithm: DKIMAlgorithm) -> bytes:
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as e:
        raise DKIMSigningError(f"cannot read DKIM key file {path}: {e.strerror}") from None
    return _load_private_key(path, mtime, algorithm)


@functools.lru_cache(maxsize=64)
def _load_private_key(path: Path, mtime_ns: int, algorithm: DKIMAlgorithm) -> bytes:
    """The key in dkimpy's form, cached per file version (a replaced file has a new mtime)."""
    try:
        return dkimpy_private_key(path.read_bytes(), algorithm)
    except OSError as e:
        raise DKIMSigningError(f"cannot read DKIM key file {path}: {e.strerror}") from None
    except DKIMKeyError as e:
        raise DKIMSigningError(f"DKIM key file {path}: {e}") from None
