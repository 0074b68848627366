"""The bot's signing key for subject assertions, and the JWKS that publishes its public half."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bot.files import write_owner_only

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class SigningKeyError(Exception):
    """The key file is missing, unreadable or of a kind we do not sign with."""


@dataclass(frozen=True)
class SigningKey:
    private_key: PrivateKey
    kid: str
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        jwk: dict[str, Any] = (
            ECAlgorithm.to_jwk(public, as_dict=True)
            if isinstance(public, ec.EllipticCurvePublicKey)
            else RSAAlgorithm.to_jwk(public, as_dict=True)
        )
        # Verifiers such as jose refuse a key whose key_ops does not list "verify"; leave it out.
        jwk.pop("key_ops", None)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def jwks(keys: list[SigningKey]) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def _thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638: a kid derived from the key itself, stable across restarts and replicas."""
    required = ("crv", "kty", "x", "y") if public_jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({k: public_jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def signing_key_from_pem(data: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not an unencrypted PEM private key ({type(exc).__name__})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise SigningKeyError("EC keys must be on P-256 (ES256)")
        alg = "ES256"
        public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise SigningKeyError("RSA keys must be at least 2048 bits")
        alg = "RS256"
        public = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        raise SigningKeyError("only EC P-256 (ES256) and RSA (RS256) keys are supported")
    return SigningKey(private_key=key, kid=_thumbprint(public), alg=alg)


def generate_signing_key() -> SigningKey:
    key = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(private_key=key, kid=_thumbprint(ECAlgorithm.to_jwk(key.public_key(), as_dict=True)), alg="ES256")


def load_signing_key(path: Path) -> SigningKey:
    try:
        return signing_key_from_pem(path.read_bytes())
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot be read: {exc.strerror}") from None
    except SigningKeyError as exc:
        raise SigningKeyError(f"{path}: {exc}") from None


def load_or_create_signing_key(path: Path) -> tuple[SigningKey, bool]:
    """Load the key at ``path``, or create it there (mode 0600). Returns (key, created)."""
    if path.exists():
        return load_signing_key(path), False
    key = generate_signing_key()
    # Exclusive create: if another replica created it a moment ago, use theirs rather than overwrite it.
    if not write_owner_only(path, key.pem()):
        return load_signing_key(path), False
    return key, True
