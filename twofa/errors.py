"""Refusals of the service layer, each with its HTTP status and the contract's error code."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


def session_ended() -> ServiceError:
    return ServiceError(401, "session_ended", "This session has ended; log in again.")


def login_not_found() -> ServiceError:
    return ServiceError(
        404, "login_not_found", "This login does not exist or has expired; log in again."
    )


def wrong_step(expected: str) -> ServiceError:
    return ServiceError(
        409,
        "wrong_step",
        f"This login is waiting for another step first: {expected.replace('_', ' ')}.",
        expected=expected,
    )


def email_taken(**details: Any) -> ServiceError:
    return ServiceError(409, "email_taken", "An account with this email already exists.", **details)


def locked(until: Any) -> ServiceError:
    if until is None:
        message = "Two-factor authentication is locked until an administrator unlocks it."
    else:
        message = "Too many wrong PINs: two-factor authentication is locked for a while."
    return ServiceError(423, "locked", message, locked_until=until)


def unavailable() -> ServiceError:
    return ServiceError(
        503, "temporarily_unavailable", "The service is busy or restarting; try again shortly."
    )
