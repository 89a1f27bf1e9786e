"""Codes, keyed digests, argon2id hashes, tokens and the sealed seal (docs/rules.md S1, S3).

Named ``crypto`` rather than ``secrets`` so it never shadows the standard library module.

Everything is keyed with the current pepper; the previous peppers of a rotation stay in the
keyring only to read what was made under them (a hash, a digest, a seal, an audit record), which
the service moves to the current pepper at its next use. Each pepper is known to the store by
its id, a keyed fingerprint that reveals nothing of the pepper itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

if TYPE_CHECKING:
    from twofa.config import Settings

log = logging.getLogger(__name__)
#: S3 floor (OWASP): argon2id, m=19456 KiB, t=2, p=1.
ARGON2 = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
#: Crockford base32: no I, L, O, U, so a code read from a mail is typed without ambiguity.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8  # 8 x 5 bits = 40 bits of entropy (S1 asks for 30)
_CODE_TYPOS = str.maketrans({"O": "0", "I": "1", "L": "1"})


class Pepper:
    """One pepper and what derives from it; ``id`` is the only part that may be shown."""

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper
        self.id = pepper_id(pepper)
        self.fernet = Fernet(base64.urlsafe_b64encode(self.mac(b"seal-encryption-key")))

    def mac(self, message: bytes) -> bytes:
        return hmac.new(self._pepper, message, hashlib.sha256).digest()

    def digest(self, purpose: str, value: str) -> str:
        return self.mac(f"{purpose}\x00{value}".encode()).hex()

    def activation_code(self, enrollment_id: str, number: int) -> str:
        raw = self.mac(f"activation-code\x00{enrollment_id}\x00{number}".encode())
        value = int.from_bytes(raw[:5], "big")
        return "".join(CODE_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(CODE_LENGTH)))

    def __repr__(self) -> str:  # never the pepper itself, wherever an object is printed
        return f"Pepper(id={self.id!r})"


def pepper_id(pepper: bytes) -> str:
    """A pepper's public name: a keyed fingerprint, which tells which pepper but not what it is."""
    return hmac.new(pepper, b"twofa-pepper-id", hashlib.sha256).hexdigest()[:8]


class Keyring:
    """Everything keyed with the server-side pepper, which never enters the database.

    ``pepper`` keys everything made from now on; ``previous`` (newest first) only reads.
    """

    def __init__(
        self,
        pepper: bytes,
        previous: Sequence[bytes] = (),
        retired_audit_keys: Sequence[bytes] = (),
    ) -> None:
        self.current = Pepper(pepper)
        self.previous: list[Pepper] = []
        for old in previous:
            candidate = Pepper(old)
            if candidate.id != self.current.id and all(p.id != candidate.id for p in self.previous):
                self.previous.append(candidate)
        self.peppers = [self.current, *self.previous]
        self._by_id = {p.id: p for p in self.peppers}
        self._fernet = MultiFernet([p.fernet for p in self.peppers])
        self._dummy_hash = ARGON2.hash(self.current.mac(b"dummy-password").hex())
        self._retired_audit_keys = list(retired_audit_keys)

    @classmethod
    def of(cls, settings: Settings) -> Keyring:
        """The deployment's keyring: the current pepper and the previous ones it still reads."""
        return cls(
            settings.pepper_bytes, settings.previous_pepper_bytes, settings.retired_audit_keys
        )

    @property
    def id(self) -> str:
        """The current pepper's id, stored beside everything made with it."""
        return self.current.id

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.peppers]

    def knows(self, pepper_id: str | None) -> bool:
        return pepper_id is None or pepper_id in self._by_id

    def stale(self, pepper_id: str | None) -> bool:
        """Made under another pepper than the current one, so to be redone at its next use.

        ``None`` (made before peppers were tagged) is stale only once a rotation happened.
        """
        if pepper_id is None:
            return bool(self.previous)
        return pepper_id != self.current.id

    @property
    def audit_key(self) -> bytes:
        """The audit chain's key (S5): the pepper's, under its own label, so it too stays out."""
        return self.current.mac(b"audit-chain-key")

    @property
    def audit_keys(self) -> list[bytes]:
        """Every pepper's audit key, current first, then those of dropped peppers: records
        written before a rotation still verify."""
        return [p.mac(b"audit-chain-key") for p in self.peppers] + self._retired_audit_keys

    def digest(self, purpose: str, value: str) -> str:
        """Keyed hash of a token or code: what the store and workflow history keep instead."""
        return self.current.digest(purpose, value)

    def digests(self, purpose: str, value: str) -> list[str]:
        """The digest under every pepper, current first: what a lookup by digest looks for."""
        return [p.digest(purpose, value) for p in self.peppers]

    def derived_token(self, purpose: str, value: str) -> str:
        """A token as strong as ``new_token()``, but the same for a repeated request (S9).

        Derived from a secret the caller holds (a login id), so nothing but its keyed hash is
        ever stored, and a caller who repeats a step after a lost answer gets the same token.
        """
        raw = self.current.mac(f"{purpose}\x00{value}".encode())
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def derived_id(self, purpose: str, value: str) -> str:
        """A UUID-shaped id (the store's 36 characters) derived like ``derived_token``."""
        return str(uuid.UUID(bytes=self.current.mac(f"{purpose}\x00{value}".encode())[:16]))

    def hash_secret(self, secret: str) -> str:
        """argon2id over the peppered secret: a stolen database alone cracks nothing.

        Made under the current pepper, whose id (``Keyring.id``) the caller stores beside it.
        """
        return ARGON2.hash(self.current.digest("argon2-input", secret))

    def verify_secret(
        self, stored_hash: str | None, secret: str, pepper_id: str | None = None
    ) -> bool:
        """Constant work whether or not a hash exists, so timing tells nothing (S7).

        ``pepper_id``: the pepper the hash was made under; ``None`` (made before peppers were
        tagged) tries each pepper of the keyring. A pepper no longer in the keyring verifies
        nothing, and says so in the log (its id only): it was dropped too early.
        """
        if pepper_id is not None and pepper_id not in self._by_id:
            log.error("a hash was made under pepper %s, which is not in the keyring", pepper_id)
            stored_hash = None
        if stored_hash is None:
            self._verify(self._dummy_hash, self.current, secret)
            return False
        peppers = [self._by_id[pepper_id]] if pepper_id is not None else self.peppers
        return any(self._verify(stored_hash, pepper, secret) for pepper in peppers)

    @staticmethod
    def _verify(stored_hash: str, pepper: Pepper, secret: str) -> bool:
        try:
            return ARGON2.verify(stored_hash, pepper.digest("argon2-input", secret))
        except (VerificationError, InvalidHashError):
            return False

    def activation_code(self, enrollment_id: str, number: int) -> str:
        """Derived, not drawn: a retried mail activity always sends the same code."""
        return self.current.activation_code(enrollment_id, number)

    def code_digest(self, code: str) -> str:
        return self.digest("activation-code", normalize_code(code))

    def submitted_code_digest(self, code: str, mails: Iterable[tuple[str, int]]) -> str:
        """The digest to submit for a typed code, whichever pepper its mail was made under.

        The workflow holds the digest the mail activity returned; a code mailed just before a
        rotation was derived, and digested, under the previous pepper. ``mails``: the
        (enrollment, number) of the codes mailed lately. A typed code that is one of those under
        a previous pepper is submitted under that pepper; anything else under the current one,
        so a wrong code is still one wrong try, counted once.
        """
        typed = normalize_code(code)
        mails = list(mails)
        for pepper in self.previous:
            for enrollment_id, number in mails:
                derived = pepper.activation_code(enrollment_id, number)
                if hmac.compare_digest(derived.encode(), typed.encode()):
                    return pepper.digest("activation-code", typed)
        return self.digest("activation-code", typed)

    def seal(self, seal: str) -> str:
        """Encrypted under the current pepper, whose id the caller stores beside it."""
        return self.current.fernet.encrypt(seal.encode()).decode()

    def unseal(self, token: str) -> str:
        """Under whichever pepper of the keyring encrypted it."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as error:
            raise ValueError("the seal was encrypted with another pepper") from error

    def fernet(self, purpose: str) -> MultiFernet:
        """A Fernet key of its own for ``purpose`` (say, a browser cookie), under every pepper:
        it encrypts under the current one and still reads what a previous one encrypted."""
        label = purpose.encode()
        return MultiFernet([Fernet(base64.urlsafe_b64encode(p.mac(label))) for p in self.peppers])

    def reseal(self, token: str) -> str:
        """The same seal, encrypted again under the current pepper."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as error:
            raise ValueError("the seal was encrypted with another pepper") from error


def normalize_code(code: str) -> str:
    return "".join(code.split()).replace("-", "").upper().translate(_CODE_TYPOS)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_pepper() -> str:
    return secrets.token_urlsafe(32)


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
