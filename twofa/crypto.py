"""Codes, keyed digests, argon2id hashes, tokens and the sealed seal (SPEC S1, S3).

Named ``crypto`` rather than DESIGN's ``secrets`` so it never shadows the standard library module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

#: S3 floor (OWASP): argon2id, m=19456 KiB, t=2, p=1.
ARGON2 = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
#: Crockford base32: no I, L, O, U, so a code read from a mail is typed without ambiguity.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8  # 8 x 5 bits = 40 bits of entropy (S1 asks for 30)
_CODE_TYPOS = str.maketrans({"O": "0", "I": "1", "L": "1"})


class Keyring:
    """Everything keyed with the server-side pepper, which never enters the database."""

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper
        self._fernet = Fernet(base64.urlsafe_b64encode(self._mac(b"seal-encryption-key")))
        self._dummy_hash = ARGON2.hash(self._mac(b"dummy-password").hex())

    @property
    def audit_key(self) -> bytes:
        """The audit chain's key (S5): the pepper's, under its own label, so it too stays out."""
        return self._mac(b"audit-chain-key")

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._pepper, message, hashlib.sha256).digest()

    def digest(self, purpose: str, value: str) -> str:
        """Keyed hash of a token or code: what the store and workflow history keep instead."""
        return self._mac(f"{purpose}\x00{value}".encode()).hex()

    def derived_token(self, purpose: str, value: str) -> str:
        """A token as strong as ``new_token()``, but the same for a repeated request (S9).

        Derived from a secret the caller holds (a login id), so nothing but its keyed hash is
        ever stored, and a caller who repeats a step after a lost answer gets the same token.
        """
        raw = self._mac(f"{purpose}\x00{value}".encode())
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def derived_id(self, purpose: str, value: str) -> str:
        """A UUID-shaped id (the store's 36 characters) derived like ``derived_token``."""
        return str(uuid.UUID(bytes=self._mac(f"{purpose}\x00{value}".encode())[:16]))

    def hash_secret(self, secret: str) -> str:
        """argon2id over the peppered secret: a stolen database alone cracks nothing."""
        return ARGON2.hash(self.digest("argon2-input", secret))

    def verify_secret(self, stored_hash: str | None, secret: str) -> bool:
        """Constant work whether or not a hash exists, so timing tells nothing (S7)."""
        candidate = self.digest("argon2-input", secret)
        try:
            return ARGON2.verify(stored_hash or self._dummy_hash, candidate) and bool(stored_hash)
        except (VerificationError, InvalidHashError):
            return False

    def activation_code(self, enrollment_id: str, number: int) -> str:
        """Derived, not drawn: a retried mail activity always sends the same code."""
        raw = self._mac(f"activation-code\x00{enrollment_id}\x00{number}".encode())
        value = int.from_bytes(raw[:5], "big")
        return "".join(CODE_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(CODE_LENGTH)))

    def code_digest(self, code: str) -> str:
        return self.digest("activation-code", normalize_code(code))

    def seal(self, seal: str) -> str:
        return self._fernet.encrypt(seal.encode()).decode()

    def unseal(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as error:
            raise ValueError("the seal was encrypted with another pepper") from error


def normalize_code(code: str) -> str:
    return "".join(code.split()).replace("-", "").upper().translate(_CODE_TYPOS)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
