"""DKIM key files: generate them, load them for signing (app/auth/dkim.py), and the DNS TXT value.

Keys are stored as PKCS#8 PEM for both algorithms (what `openssl genpkey` writes).
"""

from __future__ import annotations

import base64
from typing import Literal, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

DKIMAlgorithm = Literal["ed25519", "rsa"]
SigningKey: TypeAlias = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

# RFC 8301 3.2: at least 1024 bits, 2048 recommended; larger keys outgrow a 512-octet UDP answer.
RSA_KEY_BITS = 2048


class DKIMKeyError(ValueError):
    """The PEM data is not a private key of the expected algorithm."""


def generate_private_key_pem(algorithm: DKIMAlgorithm) -> bytes:
    """A new private key as unencrypted PKCS#8 PEM (RSA keys are 2048 bits)."""
    key: SigningKey
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    else:
        raise DKIMKeyError(f"unknown DKIM algorithm {algorithm!r} (expected ed25519 or rsa)")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes, algorithm: DKIMAlgorithm) -> SigningKey:
    """Parse an unencrypted PEM private key (PKCS#8, or PKCS#1 for RSA) and check its algorithm."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise DKIMKeyError("not an unencrypted PEM private key") from None
    if isinstance(key, ed25519.Ed25519PrivateKey) and algorithm == "ed25519":
        return key
    if isinstance(key, rsa.RSAPrivateKey) and algorithm == "rsa":
        return key
    actual = {ed25519.Ed25519PrivateKey: "ed25519", rsa.RSAPrivateKey: "rsa"}
    kind = next((name for cls, name in actual.items() if isinstance(key, cls)), type(key).__name__)
    raise DKIMKeyError(f"the key is an {kind} key, not {algorithm} as configured")


def public_key_base64(pem: bytes, algorithm: DKIMAlgorithm) -> str:
    """The p= value: raw public key for ed25519 (RFC 8463 4.2), DER SubjectPublicKeyInfo for RSA."""
    public = load_private_key(pem, algorithm).public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def dns_txt_value(pem: bytes, algorithm: DKIMAlgorithm) -> str:
    """The TXT record value to publish at `<selector>._domainkey.<domain>` (RFC 6376 3.6.1)."""
    return f"v=DKIM1; k={algorithm}; p={public_key_base64(pem, algorithm)}"
