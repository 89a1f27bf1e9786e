"""What the service layer hands back: the JSON shapes of the HTTP contract."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

StateName = Literal["disabled", "pending_code", "pending_activation", "active", "locked"]


class AccountView(BaseModel):
    id: str
    email: str
    two_factor: StateName


class LoginView(BaseModel):
    """One shape for every login outcome; absent fields are left out of the JSON."""

    outcome: Literal[
        "authenticated",
        "activation_code_required",
        "activation_required",
        "pin_required",
        "browser_not_trusted",
        "locked",
    ]
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
    state: StateName
    code_expires_at: datetime | None = None
    auto_logout_at: datetime | None = None
    locked_until: datetime | None = None
    devices: list[DeviceView] = []


class EnabledView(BaseModel):
    state: Literal["pending_code"] = "pending_code"
    auto_logout_at: datetime
    code_expires_at: datetime


class DisabledView(BaseModel):
    state: Literal["disabled"] = "disabled"
    revoked_devices: int


class OperatorView(BaseModel):
    id: str
    email: str
    role: Literal["admin", "auditor"]

    @property
    def actor(self) -> str:
        """How the audit trail and the workflow name this operator."""
        return f"{self.role}:{self.email}"

    @property
    def can_act(self) -> bool:
        return self.role == "admin"


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
    state: StateName
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
