"""The product document's rules as pure functions, and the policy snapshot a workflow runs under."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twofa.workflows.messages import TwoFactorState

#: R2: the only characters the second-factor identity accepts in an email address.
TWO_FACTOR_EMAIL_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@\\._-"
)
_EMAIL_SHAPE = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+")
_PIN_SHAPE = re.compile(r"[0-9]{4,8}")
MAX_EMAIL_LENGTH = 254
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256
MAX_SEAL_LENGTH = 200
MAX_DEVICE_NAME_LENGTH = 64


class RuleViolation(ValueError):
    """A rule refused a value; ``field`` names the input, ``code`` is the API error code."""

    def __init__(self, field: str, code: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code
        self.message = message
        self.details = details


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_email_shape(email: str, field: str = "email") -> str:
    """Any address an account may have: one ``@``, no spaces, a sane length.

    Returns the address as typed (only the whitespace around it trimmed): it is stored so, for
    R2 to judge what the user typed; lookups compare it case-insensitively.
    """
    email = email.strip()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL_SHAPE.fullmatch(email):
        raise RuleViolation(field, "invalid_email", "This is not a valid email address.")
    return email


def check_two_factor_email(email: str, field: str = "email") -> str:
    """R2, at enable (the stored address) and at activation (a new one): the one judge.

    Refuses, naming it, the first character the second factor does not support, as typed:
    lowercasing first would turn a foreign letter into an allowed one (the Kelvin sign U+212A
    into "k") or rename it (U+0130 into "i" and U+0307), and trimming would hide a space the
    user typed around it. Returns the address as typed.
    """
    for character in email:
        if character not in TWO_FACTOR_EMAIL_CHARACTERS:
            raise RuleViolation(
                field,
                "unsupported_email",
                f"Two-factor authentication does not support the character {character!r} "
                f"(U+{ord(character):04X}) in an email address; use only "
                '"a-z", "A-Z", "0-9" and "@ \\ . _ -".',
                character=character,
            )
    return check_email_shape(email, field)


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise RuleViolation(
            "password",
            "invalid_password",
            f"The password must have between {MIN_PASSWORD_LENGTH} and "
            f"{MAX_PASSWORD_LENGTH} characters.",
        )
    return password


def check_pin(pin: str, confirmation: str) -> str:
    """R6: 4 to 8 digits, at least 2 different ones, typed twice the same."""
    if not _PIN_SHAPE.fullmatch(pin):
        raise RuleViolation(
            "pin", "invalid_pin_format", "The PIN must have between 4 and 8 digits."
        )
    if len(set(pin)) < 2:
        raise RuleViolation(
            "pin", "invalid_pin_format", "The PIN must contain at least 2 different digits."
        )
    if confirmation != pin:
        raise RuleViolation(
            "pin_confirmation", "pin_mismatch", "The PIN confirmation does not match the PIN."
        )
    return pin


def check_pin_confirmation(pin: str, confirmation: str) -> str:
    """The confirmation must repeat the PIN, whether or not the PIN itself is valid."""
    if confirmation != pin:
        raise RuleViolation(
            "pin_confirmation", "pin_mismatch", "The PIN confirmation does not match the PIN."
        )
    return confirmation


def check_pin_shape(pin: str) -> str:
    """A PIN typed at login: 4 to 8 digits, or refused before it is checked (and counted)."""
    if not _PIN_SHAPE.fullmatch(pin):
        raise RuleViolation("pin", "invalid_pin_format", "The PIN has between 4 and 8 digits.")
    return pin


def check_seal(seal: str) -> str:
    """R6: the antiphishing seal is a required secret sentence."""
    seal = seal.strip()
    if not seal:
        raise RuleViolation("seal", "seal_required", "The antiphishing seal is required.")
    if len(seal) > MAX_SEAL_LENGTH:
        raise RuleViolation(
            "seal",
            "seal_too_long",
            f"The antiphishing seal has at most {MAX_SEAL_LENGTH} characters.",
        )
    return seal


def check_device_name(name: str | None) -> str | None:
    if name is None or not name.strip():
        return None
    name = name.strip()
    if len(name) > MAX_DEVICE_NAME_LENGTH or not name.isprintable():
        raise RuleViolation(
            "device_name",
            "invalid_device_name",
            f"The device name has at most {MAX_DEVICE_NAME_LENGTH} printable characters.",
        )
    return name


@dataclass(frozen=True)
class ActivationFields:
    """An activation's fields as the rules keep them (the PIN is hashed by the caller)."""

    seal: str
    device_name: str | None
    email: str | None


class ActivationRefused(ValueError):
    """Every rule an activation broke, in the order of its fields."""

    def __init__(self, violations: list[RuleViolation]) -> None:
        super().__init__(violations[0].message)
        self.violations = violations


def check_activation(
    pin: str, pin_confirmation: str, seal: str, device_name: str | None, email: str | None
) -> ActivationFields:
    """R6: every activation field checked, and every wrong one reported at once, so a form can
    show all its errors at the first try."""
    violations: list[RuleViolation] = []
    values: dict[str, str | None] = {}
    checks: list[tuple[str, Callable[[], str | None]]] = [
        ("pin", lambda: check_pin(pin, pin)),
        ("pin_confirmation", lambda: check_pin_confirmation(pin, pin_confirmation)),
        ("seal", lambda: check_seal(seal)),
        ("device_name", lambda: check_device_name(device_name)),
        ("email", lambda: check_two_factor_email(email) if email else None),
    ]
    for name, check in checks:
        try:
            values[name] = check()
        except RuleViolation as error:
            violations.append(error)
    if violations:
        raise ActivationRefused(violations)
    return ActivationFields(str(values["seal"]), values["device_name"], values["email"])


def password_block_seconds(failures_in_a_row: int) -> int:
    """S2: 4 failures block 1 minute, each 4 more add a minute, 10 minutes at most."""
    if failures_in_a_row < 4 or failures_in_a_row % 4:
        return 0
    return 60 * min(failures_in_a_row // 4, 10)


def effective_state(stored: str, locked_until: datetime | None, now: datetime) -> TwoFactorState:
    """The stored state, read exactly: a lock whose time has passed is over already (S2), even
    before the workflow's timer has ended it in the store."""
    from twofa.workflows.messages import TwoFactorState  # that module imports Policy from here

    state = TwoFactorState(stored)
    if state is TwoFactorState.LOCKED and locked_until is not None and locked_until <= now:
        return TwoFactorState.ACTIVE
    return state


@dataclass(frozen=True)
class Policy:
    """Durations and limits a workflow applies; a snapshot in its input, so history shows them.

    Its defaults are the settings' defaults (``Settings.policy`` builds the one a workflow gets).
    """

    auto_logout_seconds: float = 10
    code_ttl_seconds: float = 900
    pin_lock_seconds: float = 900
    max_code_failures: int = 5
    max_pin_failures: int = 5
    locks_before_admin_unlock: int = 3
    history_event_limit: int = 2000
