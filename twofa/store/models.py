"""Tables of the store. Secrets appear only as argon2id hashes, keyed digests or ciphertext (S3)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CheckConstraint

from twofa.vocabulary import STORED_STATES, Role, Step, TwoFactorState


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


def _one_of(column: str, words: tuple[str, ...], name: str) -> CheckConstraint:
    """The column holds one of its vocabulary's words (twofa/vocabulary.py), nothing else."""
    listed = ", ".join(f"'{word}'" for word in words)
    return CheckConstraint(f"{column} IN ({listed})", name=name)


class Account(Base):
    """An account and the projection of its 2FA state, written by the workflow's activities."""

    __tablename__ = "accounts"
    __table_args__ = (
        Index("ix_accounts_created_at_id", "created_at", "id"),
        Index("ix_accounts_updated_at_id", "updated_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    two_factor_state: Mapped[str] = mapped_column(
        String(20),
        _one_of("two_factor_state", STORED_STATES, "ck_accounts_two_factor_state"),
        default=TwoFactorState.DISABLED,
    )
    auto_logout_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The workflow run whose enable made that cut (migration 0013; None for older cuts).
    auto_logout_run: Mapped[str | None] = mapped_column(String(64))
    code_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    code_usable: Mapped[bool] = mapped_column(default=False)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pin_failures: Mapped[int] = mapped_column(Integer, default=0)
    pin_locks_in_a_row: Mapped[int] = mapped_column(Integer, default=0)
    #: One PIN check at a time per account, so parallel guesses cannot outrun the counter (S2).
    pin_check_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A wrong PIN the workflow has yet to confirm counting: its update's id (migration 0014).
    #: The account's next PIN check sends it again before it checks anything (S2).
    pin_failure_unrecorded: Mapped[str | None] = mapped_column(String(64))
    pin_hash: Mapped[str | None] = mapped_column(String(200))
    seal_ciphertext: Mapped[str | None] = mapped_column(Text)
    #: The id of the pepper each secret was made under (None: before peppers were tagged).
    password_pepper: Mapped[str | None] = mapped_column(String(16))
    pin_pepper: Mapped[str | None] = mapped_column(String(16))
    seal_pepper: Mapped[str | None] = mapped_column(String(16))
    projection_version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The furthest enrollment step ever reached (1 enabled, 2 code validated, 3 activated),
    #: kept by the database's triggers (migration 0011) for the overview's funnel.
    enrollment_reached: Mapped[int] = mapped_column(Integer, server_default="0")


#: Emails are kept as typed (R2 judges them so), yet one account per address whatever its case;
#: this index also answers the login's case-insensitive lookup, and the listing's email sort and
#: prefix search; the second one the same within a 2FA state.
#: On PostgreSQL both also carry the email and the id, so a search's bounded count and the
#: offset of a page are walked in the index alone (its planner reads an expression index alone
#: only when the column inside is there too).
_CARRIED: dict[str, Any] = {"postgresql_include": ["email", "id"]}
Index("uq_accounts_email_lower", func.lower(Account.email), unique=True, **_CARRIED)
Index(
    "ix_accounts_state_email_lower", Account.two_factor_state, func.lower(Account.email), **_CARRIED
)


class StateTally(Base):
    """Accounts per stored 2FA state, kept by triggers on ``accounts`` (migration 0011)."""

    __tablename__ = "state_tallies"

    state: Mapped[str] = mapped_column(String(20), primary_key=True)
    accounts: Mapped[int] = mapped_column(Integer)


class FunnelTally(Base):
    """Accounts whose ``enrollment_reached`` is at least ``level``, kept by triggers."""

    __tablename__ = "funnel_tallies"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    accounts: Mapped[int] = mapped_column(Integer)


class AuditDay(Base):
    """Audit records per UTC day and event, kept by a trigger on ``audit_log``."""

    __tablename__ = "audit_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    event: Mapped[str] = mapped_column(String(40), primary_key=True)
    records: Mapped[int] = mapped_column(Integer)


class Device(Base):
    """A trusted browser; revoked devices stay for the record."""

    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_account_active", "account_id", "revoked_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(64))
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(300))  # an actor, as in audit
    pepper_id: Mapped[str | None] = mapped_column(String(16))  # of the token's digest


class Session(Base):
    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_account_open", "account_id", "ended_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    device_id: Mapped[str | None] = mapped_column(String(36))
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Why it ended; on an open session, "kept_for_disable" (see session_queries.KEPT_FOR_DISABLE).
    end_reason: Mapped[str | None] = mapped_column(String(20))
    pepper_id: Mapped[str | None] = mapped_column(String(16))  # of the token's digest


class LoginChallenge(Base):
    """A login in progress: which step it waits for. Its id is kept only as a keyed digest."""

    __tablename__ = "login_challenges"

    id_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[str] = mapped_column(
        String(20), _one_of("step", tuple(Step), "ck_login_challenges_step")
    )
    device_id: Mapped[str | None] = mapped_column(String(36))
    device_name: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginThrottle(Base):
    """Primary-password failures per email, whether or not the account exists (S2, S7)."""

    __tablename__ = "login_throttles"

    key_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ActivationDraft(Base):
    """Credentials typed at activation, held here so they never travel through workflow history."""

    __tablename__ = "activation_drafts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    pin_hash: Mapped[str] = mapped_column(String(200))
    seal_ciphertext: Mapped[str] = mapped_column(Text)
    device_name: Mapped[str | None] = mapped_column(String(64))
    device_token_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    pepper_id: Mapped[str | None] = mapped_column(String(16))  # of the PIN, seal and digest


class SentMail(Base):
    """One row per activation mail, keyed by (enrollment, code number): retries never resend."""

    __tablename__ = "sent_mails"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[str] = mapped_column(String(200))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Notification(Base):
    """A mail telling the user what happened (S10), written in the transaction that made it
    happen and sent by the worker's notifier: none is lost, and none blocks the step."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "sent_at", "failed_at", "due_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(30))
    to_address: Mapped[str] = mapped_column(String(254))
    details: Mapped[str] = mapped_column(Text)  # JSON: what the mail says, never a secret
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)  # next try; a claim pushes it on
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(200))
    #: The request that queued it, for the audit record of its sending.
    request_id: Mapped[str | None] = mapped_column(String(128))


class AuditRecord(Base):
    """One link of the hash-chained audit log (S5); never updated, never deleted."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_event_at", "event", "at"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    account_id: Mapped[str | None] = mapped_column(String(36), index=True)
    actor: Mapped[str] = mapped_column(String(300))
    event: Mapped[str] = mapped_column(String(40))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: 1: public SHA-256 (records from before the key); 2: HMAC under the pepper's audit key.
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    #: The HTTP request that caused it (its ``X-Request-ID``); None when none did.
    request_id: Mapped[str | None] = mapped_column(String(128))


class Operator(Base):
    """A dashboard user: an admin acts, an auditor only reads (S6)."""

    __tablename__ = "operators"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10), _one_of("role", tuple(Role), "ck_operators_role"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    pepper_id: Mapped[str | None] = mapped_column(String(16))  # of the password hash


class OperatorSession(Base):
    __tablename__ = "operator_sessions"

    token_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator_id: Mapped[str] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pepper_id: Mapped[str | None] = mapped_column(String(16))  # of the token's digest
