"""Tokens at rest: Fernet (AES-128-CBC + HMAC-SHA256) under JIT_ENCRYPTION_KEY, and fingerprints."""

from __future__ import annotations

import hashlib

from cryptography.fernet import Fernet, InvalidToken


class TokenCipher:
    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def encrypt(self, token: str) -> bytes:
        return self._fernet.encrypt(token.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            # Never include the ciphertext: it is useless to a reader and noisy in logs.
            raise ValueError(
                "stored token cannot be decrypted with JIT_ENCRYPTION_KEY (was the key changed?)"
            ) from None

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()


def fingerprint(token: str) -> str:
    """Identifies a token in the audit trail without revealing it (tokens are high-entropy)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def pickup_hash(pickup_id: str) -> str:
    """Only the hash of a pickup id is stored, so a database reader cannot use live links."""
    return hashlib.sha256(pickup_id.encode()).hexdigest()
