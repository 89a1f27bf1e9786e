"""The one catalog of refusals: each with its HTTP status, the contract's code and message.

The service layers raise from it, the API answers each with its status and body, and the pages
and dashboard word it for the person in front of them. Nothing else makes up an error, so a
code, its status and its message are written once (docs/api.md lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twofa.policy import ActivationRefused, RuleViolation


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


@dataclass(frozen=True)
class Refusal:
    """One entry of the catalog; calling it makes the error to raise.

    ``field``: the input it names (the body's ``field``). A message with ``{}`` takes the
    ``words`` of the call (a step, a limit); ``details`` go into the body as they are.
    """

    status: int
    code: str
    message: str
    field: str | None = None

    def __call__(self, *words: object, **details: Any) -> ServiceError:
        message = self.message.format(*words) if words else self.message
        named = {"field": self.field} if self.field else {}
        return ServiceError(self.status, self.code, message, **named, **details)


# -- users: accounts, logins and their sessions

EMAIL_TAKEN = Refusal(409, "email_taken", "An account with this email already exists.")
#: The activation's new email, taken by another account (before or while it ran).
NEW_EMAIL_TAKEN = Refusal(409, "email_taken", EMAIL_TAKEN.message, field="email")
INVALID_CREDENTIALS = Refusal(401, "invalid_credentials", "Wrong email or password.")
TOO_MANY_ATTEMPTS = Refusal(
    429, "too_many_attempts", "Too many failed logins for this email; try again later."
)
SESSION_ENDED = Refusal(401, "session_ended", "This session has ended; log in again.")
LOGIN_NOT_FOUND = Refusal(
    404, "login_not_found", "This login does not exist or has expired; log in again."
)
WRONG_STEP = Refusal(409, "wrong_step", "This login is waiting for another step first: {}.")
CODE_EXPIRED = Refusal(
    410, "code_expired", "This activation code no longer works; log in again to receive a new one."
)
INVALID_CODE = Refusal(400, "invalid_code", "Wrong activation code.")
#: The wrong code that used the last try: the code is burnt.
LAST_INVALID_CODE = Refusal(
    400,
    "invalid_code",
    "Wrong activation code. This code no longer works; log in again to receive a new one.",
)
INVALID_PIN = Refusal(400, "invalid_pin", "Wrong PIN.")
PIN_CHECK_IN_PROGRESS = Refusal(
    429,
    "pin_check_in_progress",
    "Another PIN of this account is being checked; try again in a moment.",
)
LOCKED_UNTIL_UNLOCKED = Refusal(
    423, "locked", "Two-factor authentication is locked until an administrator unlocks it."
)
LOCKED = Refusal(
    423, "locked", "Too many wrong PINs: two-factor authentication is locked for a while."
)
CONFIRMATION_REQUIRED = Refusal(
    400,
    "confirmation_required",
    'Disabling two-factor authentication needs an explicit confirmation ("confirm": true).',
)
DEVICE_NOT_FOUND = Refusal(404, "device_not_found", "No trusted browser with this id.")
UNAVAILABLE = Refusal(
    503, "temporarily_unavailable", "The service is busy or restarting; try again shortly."
)

# -- the workflow's refusals (its validators' reasons)

ALREADY_ENABLED = Refusal(409, "already_enabled", "Two-factor authentication is already enabled.")
NOT_ENABLED = Refusal(409, "two_factor_not_enabled", "Two-factor authentication is not enabled.")
NOT_ACTIVE = Refusal(409, "two_factor_not_active", "Two-factor authentication is not active.")
NOT_LOCKED = Refusal(409, "not_locked", "Two-factor authentication is not locked.")
NO_CODE_EXPECTED = Refusal(409, "no_code_expected", "No activation code is expected now.")
ACTIVATION_NOT_EXPECTED = Refusal(
    409, "activation_not_expected", "This account is not waiting for activation; log in again."
)
ACTIVATION_DRAFT_GONE = Refusal(
    409, "activation_not_expected", "This activation was interrupted; log in again to activate."
)
#: Each reason a workflow update is refused with (an ``ApplicationError`` type), as a refusal.
WORKFLOW_REFUSALS = {
    "already_enabled": ALREADY_ENABLED,
    "not_enabled": NOT_ENABLED,
    "not_active": NOT_ACTIVE,
    "not_locked": NOT_LOCKED,
    "no_code_expected": NO_CODE_EXPECTED,
    "not_pending_activation": ACTIVATION_NOT_EXPECTED,
    "activation_draft_gone": ACTIVATION_DRAFT_GONE,
    "email_taken": NEW_EMAIL_TAKEN,  # the new email was taken while the activation ran
}

# -- operators (the dashboard and the CLI)

READ_ONLY = Refusal(403, "read_only", "Auditors can read everything but change nothing.")
INVALID_ROLE = Refusal(422, "invalid_role", "The role is admin or auditor.", field="role")
OPERATOR_EMAIL_TAKEN = Refusal(409, "email_taken", "An operator with this email exists.")
SIGNED_OUT = Refusal(401, "signed_out", "Sign in to the dashboard.")
DASHBOARD_SESSION_ENDED = Refusal(401, "signed_out", "This dashboard session has ended.")
ACCOUNT_NOT_FOUND = Refusal(404, "account_not_found", "No account with this id.")

# -- the HTTP edge

INVALID_SERVICE_TOKEN = Refusal(401, "invalid_service_token", "A valid service token is required.")
PAYLOAD_TOO_LARGE = Refusal(413, "payload_too_large", "The request body is larger than {} bytes.")
#: A body the API's models refuse: the field, then what is wrong with it.
INVALID_REQUEST = Refusal(422, "invalid_request", "{}: {}")
INTERNAL_ERROR = Refusal(500, "internal_error", "Something went wrong on our side.")
#: The codes of the web framework's own refusals (an unknown route, a wrong method).
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def http_error(status: int, detail: str) -> ServiceError:
    """A refusal of the web framework itself, in the contract's shape."""
    return ServiceError(status, HTTP_CODES.get(status, "http_error"), detail)


def rule_refused(error: RuleViolation) -> ServiceError:
    """A refused rule (policy.py) as the contract's 422, naming the field (and the character,
    for R2): the rules word their own refusals."""
    return ServiceError(422, error.code, error.message, field=error.field, **error.details)


def activation_refused(refusal: ActivationRefused) -> ServiceError:
    """R6's 422: the first wrong field as usual (``field``, ``error``, ``message``), and each
    wrong field in ``fields``."""
    first = rule_refused(refusal.violations[0])
    first.details["fields"] = [
        {"field": v.field, "error": v.code, "message": v.message, **v.details}
        for v in refusal.violations
    ]
    return first


def wrong_step(expected: str) -> ServiceError:
    return WRONG_STEP(expected.replace("_", " "), expected=expected)


def locked(until: datetime | None) -> ServiceError:
    """Locked for a while (``until``), or until an administrator unlocks it (``None``)."""
    refusal = LOCKED_UNTIL_UNLOCKED if until is None else LOCKED
    return refusal(locked_until=until)


def invalid_code(attempts_left: int | None) -> ServiceError:
    refusal = LAST_INVALID_CODE if attempts_left == 0 else INVALID_CODE
    return refusal(attempts_left=attempts_left)
