"""Typed inputs and results of the two-factor workflow and its activities.

None of these carries a secret (S4): codes travel only as keyed digests, PINs and seals stay in
the store, and the workflow learns only verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from twofa.policy import Policy

WORKFLOW_ID_PREFIX = "two-factor-"
STATE_SEARCH_ATTRIBUTE = "TwoFactorState"


def workflow_id(account_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{account_id}"


class TwoFactorState(StrEnum):
    NEW = "new"  # the workflow started, the enable update has not run yet
    DISABLED = "disabled"
    PENDING_CODE = "pending_code"
    PENDING_ACTIVATION = "pending_activation"
    ACTIVE = "active"
    LOCKED = "locked"


class CodeVerdict(StrEnum):
    ACCEPTED = "accepted"
    INVALID = "invalid"
    EXPIRED = "expired"
    LOCKED = "locked"


@dataclass
class Progress:
    """Everything the workflow knows; carried whole into a continued-as-new run."""

    state: TwoFactorState = TwoFactorState.NEW
    enrollment_id: str = ""
    enabled_at: datetime | None = None
    auto_logout_at: datetime | None = None
    auto_logout_done: bool = False
    code_number: int = 0
    code_digest: str | None = None
    code_expires_at: datetime | None = None
    code_failures: int = 0
    code_accepted_for: str = ""  # the login (keyed digest) whose code was accepted last
    pin_failures: int = 0
    locks_in_a_row: int = 0
    locked_until: datetime | None = None
    version: int = 0


@dataclass
class TwoFactorInput:
    account_id: str
    policy: Policy
    progress: Progress | None = None


@dataclass
class EnableResult:
    auto_logout_at: datetime
    code_expires_at: datetime
    code_sent: bool = True  # False: the relay refused the mail for good


@dataclass
class NewCodeRequest:
    """``reuse_fresh``: a login racing another keeps the code just mailed, not a new one."""

    reuse_fresh: bool = False


@dataclass
class NewCodeResult:
    code_expires_at: datetime
    code_sent: bool
    refused: bool = False  # the relay refused the mail for good: no code is out


@dataclass
class CodeSubmission:
    """``login``: the keyed digest of the login it was typed in (never the login id itself)."""

    code_digest: str
    login: str = ""


@dataclass
class CodeResult:
    verdict: CodeVerdict
    attempts_left: int | None = None
    locked_until: datetime | None = None


@dataclass
class Activation:
    draft_id: str
    email: str | None = None


@dataclass
class ActivationResult:
    device_id: str


@dataclass
class PinFailureResult:
    attempts_left: int
    locked: bool
    locked_until: datetime | None = None


@dataclass
class ActorRequest:
    """Who acts: ``user``, or ``admin:<email>`` for dashboard actions."""

    actor: str = "user"


@dataclass
class DisableResult:
    revoked_devices: int


# Activity messages


@dataclass
class Projection:
    """The 2FA state as the API's hot path reads it from the store."""

    account_id: str
    state: TwoFactorState
    version: int
    auto_logout_at: datetime | None = None
    code_expires_at: datetime | None = None
    code_usable: bool = False
    locked_until: datetime | None = None
    pin_failures: int = 0
    locks_in_a_row: int = 0
    actor: str = "user"


@dataclass
class CodeMail:
    account_id: str
    enrollment_id: str
    number: int
    expires_at: datetime


@dataclass
class SessionCut:
    """Sessions opened before ``opened_before`` (2FA's enabling) end at ``at`` (R3)."""

    account_id: str
    at: datetime
    opened_before: datetime


@dataclass
class ActivationEffect:
    projection: Projection
    draft_id: str
    email: str | None = None


@dataclass
class DisableEffect:
    projection: Projection
