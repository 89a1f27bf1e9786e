"""What the service layer hands back: the JSON shapes of the HTTP contract."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
)

from twofa.vocabulary import STORED_STATES, Outcome, Role, TwoFactorState

#: A state as the store holds it and the API answers it: a ``TwoFactorState`` once validated,
#: and in the schema the stored states only, as before (``NEW`` never leaves a workflow).
StoredState = Annotated[
    str,
    AfterValidator(TwoFactorState),
    WithJsonSchema({"enum": [s.value for s in STORED_STATES], "type": "string"}),
]


class AccountView(BaseModel):
    id: str
    email: str
    two_factor: StoredState


class LoginView(BaseModel):
    """One shape for every login outcome; absent fields are left out of the JSON."""

    outcome: Outcome
    login_id: str | None = None
    session_token: str | None = None
    expires_at: datetime | None = None
    code_expires_at: datetime | None = None
    code_sent: bool | None = None
    #: True when the relay refused the activation mail for good: no code is on its way.
    mail_refused: bool | None = None
    seal: str | None = None
    device_id: str | None = None
    device_token: str | None = None
    locked_until: datetime | None = None

    @model_serializer(mode="wrap")
    def _locked_names_its_end(self, handler: SerializerFunctionWrapHandler):
        """A lock only an admin lifts still answers ``locked_until: null``: the outcome table
        names the field, so a caller may read it without checking it is there.

        No return annotation: pydantic would make it the response's schema instead of the
        fields'."""
        shown: dict[str, Any] = handler(self)
        if self.outcome == Outcome.LOCKED:
            shown.setdefault("locked_until", None)
        return shown


class SessionView(BaseModel):
    account_id: str
    email: str
    expires_at: datetime


class DeviceView(BaseModel):
    id: str
    name: str | None
    enrolled_at: datetime
    last_used_at: datetime | None


class TwoFactorView(BaseModel):
    state: StoredState
    code_expires_at: datetime | None = None
    auto_logout_at: datetime | None = None
    locked_until: datetime | None = None
    devices: list[DeviceView] = []


class EnabledView(BaseModel):
    state: Literal[TwoFactorState.PENDING_CODE] = TwoFactorState.PENDING_CODE
    auto_logout_at: datetime
    code_expires_at: datetime


class DisabledView(BaseModel):
    state: Literal[TwoFactorState.DISABLED] = TwoFactorState.DISABLED
    revoked_devices: int


class OperatorView(BaseModel):
    id: str
    email: str
    role: Role

    @property
    def actor(self) -> str:
        """How the audit trail and the workflow name this operator."""
        return f"{self.role}:{self.email}"

    @property
    def can_act(self) -> bool:
        return self.role is Role.ADMIN


class DayCount(BaseModel):
    day: str
    event: str
    count: int


class OverviewView(BaseModel):
    states: dict[str, int]
    funnel: dict[str, int]
    per_day: list[DayCount]
    locked_now: list[AccountRow]


class AccountRow(BaseModel):
    id: str
    email: str
    state: StoredState
    created_at: datetime
    updated_at: datetime
    locked_until: datetime | None = None


class AccountPage(BaseModel):
    rows: list[AccountRow]
    #: Exact, or (when ``total_is_exact`` is false) a lower bound: "more than ``total``".
    total: int
    total_is_exact: bool = True
    page: int
    page_size: int
    #: The pages that can be reached (the first admin_queries.REACHABLE matches).
    pages: int = 1


class SessionRow(BaseModel):
    id: str
    device_id: str | None
    created_at: datetime
    expires_at: datetime


class AccountDetail(BaseModel):
    account: AccountRow
    auto_logout_at: datetime | None
    code_expires_at: datetime | None
    pin_failures: int
    #: Locks by wrong PINs since the last right PIN or unlock; the lock resets ``pin_failures``.
    pin_locks_in_a_row: int = 0
    devices: list[DeviceView]
    sessions: list[SessionRow]


class TimelineRow(BaseModel):
    """One step of an account's workflow history, told without any payload but the state."""

    time: datetime
    run: int
    step: str
    details: str


class AuditRow(BaseModel):
    seq: int
    time: datetime
    actor: str
    event: str
    details: str
    request_id: str | None = None  # the HTTP request that caused it, as its log lines name it


OverviewView.model_rebuild()
