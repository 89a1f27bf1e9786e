"""What admins and auditors do (the dashboard maps it): watch, read history, and act.

Auditors read everything admins read; every action checks the role here, in the service layer,
so a hidden button is never the only guard (S6). Actions reach the account's workflow and the
audit trail with the operator as actor.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.json_format import MessageToDict
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.service import RPCError, RPCStatusCode

from twofa import audit, errors
from twofa.crypto import new_token
from twofa.policy import RuleViolation, check_email_shape, check_password, normalize_email
from twofa.service import TwoFactorService, state_of, utcnow
from twofa.store import (
    account_queries,
    admin_queries,
    operator_queries,
    session_queries,
    throttle_queries,
)
from twofa.store.admin_queries import SortKey
from twofa.store.models import Account, Operator
from twofa.views import (
    AccountDetail,
    AccountPage,
    AccountRow,
    AuditRow,
    DayCount,
    DisabledView,
    OperatorView,
    OverviewView,
    SessionRow,
    TimelineRow,
)
from twofa.vocabulary import STORED_STATES, Role
from twofa.vocabulary import TwoFactorState as S
from twofa.workflows.messages import STATE_SEARCH_ATTRIBUTE, ActorRequest, workflow_id
from twofa.workflows.two_factor import TwoFactorWorkflow

log = logging.getLogger(__name__)
#: Temporal away or overloaded: worth a "read it later"; any other refusal is a bug to see.
_NOT_ANSWERING = (
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
)

OPERATOR_SESSION_TTL = timedelta(hours=8)
MAX_PAGE_SIZE = 200
#: The enrollment funnel's steps, in the order of ``Account.enrollment_reached`` (1, 2, 3).
FUNNEL = ("enabled", "code validated", "activated")
#: The audit events the overview counts per day.
DAILY_EVENTS = ("device_enrolled", "pin_rejected", "two_factor_locked")
_TIMELINE_STEPS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "run started",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "request accepted",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED: "request answered",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "effect scheduled",
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "effect done",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "effect failed, retried",
    EventType.EVENT_TYPE_TIMER_STARTED: "timer set",
    EventType.EVENT_TYPE_TIMER_FIRED: "timer fired",
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: "state changed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued as new run",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "run finished (2FA disabled)",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "run terminated",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "run failed",
}


def _row(account: Account, now: datetime) -> AccountRow:
    return AccountRow(
        id=account.id,
        email=account.email,
        state=state_of(account, now),
        created_at=account.created_at,
        updated_at=account.updated_at,
        locked_until=account.locked_until if account.two_factor_state == S.LOCKED else None,
    )


class AdminService:
    def __init__(self, users: TwoFactorService) -> None:
        self.users = users
        self.db = users.db
        self.keyring = users.keyring

    # -- operators and their sessions

    async def create_operator(self, email: str, role: str, password: str) -> OperatorView:
        try:
            email = normalize_email(check_email_shape(email))  # operators sign in lowercased
            check_password(password)
        except RuleViolation as error:
            raise errors.rule_refused(error) from None
        if role not in tuple(Role):
            raise errors.INVALID_ROLE()
        role = Role(role)
        password_hash = await self.users.kdf(self.keyring.hash_secret, password)
        created_at = utcnow()
        async with self.db.write() as db:
            if await operator_queries.operator_email_taken(db, email):
                raise errors.OPERATOR_EMAIL_TAKEN()
            operator_id = await operator_queries.add_operator(
                db,
                email=email,
                role=role,
                password_hash=password_hash,
                pepper_id=self.keyring.id,
                created_at=created_at,
            )
            await audit.append(db, "operator_created", actor="cli", operator=email, role=role)
        return OperatorView(id=operator_id, email=email, role=role)

    async def sign_in(self, email: str, password: str) -> tuple[str, OperatorView]:
        """Throttled like users' logins (S2); returns a session token and who signed in."""
        email = normalize_email(email)
        async with self.db.read() as db:
            operator = await operator_queries.operator_by_email(db, email)
        passed = await self.users.password_gate(
            "operator_login",
            email,
            password,
            operator.password_hash if operator else None,
            actor=f"operator:{email}" if operator else "operator",  # never what was typed (S4)
            stored_pepper=operator.pepper_id if operator else None,
        )
        assert operator is not None
        token, now = new_token(), utcnow()
        new_hash = None
        if self.keyring.stale(operator.pepper_id):  # hashed under a previous pepper: anew
            new_hash = await self.users.kdf(self.keyring.hash_secret, password)
        async with self.db.write() as db:
            await throttle_queries.clear_password_failures(db, passed)
            if new_hash is not None:
                await operator_queries.rehash_operator(
                    db, operator.id, operator.password_hash, new_hash, self.keyring.id
                )
            await operator_queries.open_operator_session(
                db,
                token_digest=self.keyring.digest("operator-session", token),
                pepper_id=self.keyring.id,
                operator_id=operator.id,
                created_at=now,
                expires_at=now + OPERATOR_SESSION_TTL,
            )
            signed_in = _operator_view(operator)
            await audit.append(db, "operator_signed_in", actor=signed_in.actor)
        return token, signed_in

    async def operator(self, token: str | None) -> OperatorView:
        """The operator of a live dashboard session; sessions expire after 8 hours."""
        if not token:
            raise errors.SIGNED_OUT()
        async with self.db.read() as db:
            row = await operator_queries.operator_of_session(
                db, self.keyring.digests("operator-session", token), utcnow()
            )
        if row is None:
            raise errors.DASHBOARD_SESSION_ENDED()
        return _operator_view(row)

    async def sign_out(self, token: str) -> None:
        """Audited as the sign-in is (S5); a repeat, or a session already over, writes nothing."""
        async with self.db.write() as db:
            ended = await operator_queries.end_operator_session(
                db, self.keyring.digests("operator-session", token), utcnow()
            )
            if ended is not None:
                await audit.append(db, "operator_signed_out", actor=_operator_view(ended).actor)

    # -- reading (admins and auditors)

    async def overview(self, days: int = 30) -> OverviewView:
        """Counts from the store's tallies (exact, kept with every change), never a count over
        all accounts or all audit records: quick at a million accounts."""
        now = utcnow()
        since = (now - timedelta(days=days)).date()
        async with self.db.read() as db:
            states = await admin_queries.state_counts(db)
            reached = await admin_queries.funnel_counts(db)
            per_day = await admin_queries.audit_days(db, since, DAILY_EVENTS)
            locked = await admin_queries.locked_accounts(db, MAX_PAGE_SIZE)
        locked_now = [r for r in (_row(a, now) for a in locked) if r.state == S.LOCKED]
        return OverviewView(
            states={s: states.get(s, 0) for s in STORED_STATES},
            funnel={step: reached.get(level, 0) for level, step in enumerate(FUNNEL, start=1)},
            per_day=[DayCount(day=str(d), event=e, count=c) for d, e, c in per_day],
            locked_now=locked_now,
        )

    async def accounts(
        self,
        *,
        search: str = "",
        state: str | None = None,
        sort: SortKey = "email",
        descending: bool = False,
        page: int = 1,
        page_size: int = 50,
    ) -> AccountPage:
        """One page of accounts, filtered, sorted and paged in the database (indexed). Pages
        reach the first REACHABLE matches; a search counts its matches up to that bound."""
        page_size = min(max(page_size, 1), MAX_PAGE_SIZE)
        prefix = normalize_email(search)
        async with self.db.read() as db:
            total, exact = await admin_queries.count_accounts(db, prefix, state)
            pages = max(1, -(-min(total, admin_queries.REACHABLE) // page_size))
            page = min(max(page, 1), pages)
            rows = await admin_queries.account_page(
                db,
                prefix=prefix,
                state=state,
                sort=sort,
                descending=descending,
                offset=(page - 1) * page_size,
                limit=page_size,
            )
        now = utcnow()
        return AccountPage(
            rows=[_row(a, now) for a in rows],
            total=total,
            total_is_exact=exact,
            page=page,
            page_size=page_size,
            pages=pages,
        )

    async def account(self, account_id: str) -> AccountDetail:
        now = utcnow()
        async with self.db.read() as db:
            account = await account_queries.account_by_id(db, account_id)
            if account is None:
                raise errors.ACCOUNT_NOT_FOUND()
            sessions = await session_queries.open_sessions(db, account_id, now)
        pending = account.two_factor_state in (S.PENDING_CODE, S.PENDING_ACTIVATION)
        return AccountDetail(
            account=_row(account, now),
            auto_logout_at=account.auto_logout_at if pending else None,
            code_expires_at=account.code_expires_at
            if account.two_factor_state == S.PENDING_CODE
            else None,
            pin_failures=account.pin_failures,
            pin_locks_in_a_row=account.pin_locks_in_a_row,
            devices=await self.users.devices(account.id),
            sessions=[
                SessionRow(
                    id=s.id, device_id=s.device_id, created_at=s.created_at, expires_at=s.expires_at
                )
                for s in sessions
            ],
        )

    async def audit_trail(self, account_id: str) -> list[AuditRow]:
        async with self.db.read() as db:
            records = await audit.history(db, account_id)
        return [
            AuditRow(
                seq=r.seq,
                time=r.at,
                actor=r.actor,
                event=r.event,
                details=r.details,
                request_id=r.request_id,
            )
            for r in records
        ]

    async def timeline(self, account_id: str) -> list[TimelineRow]:
        """Every run of the account's workflow (enrollments, continue-as-new), oldest first;
        503 while Temporal does not answer (the audit trail, in the store, still reads)."""
        try:
            uuid.UUID(account_id)  # it goes into a visibility query: only an id may
        except ValueError:
            raise errors.ACCOUNT_NOT_FOUND() from None
        try:
            return await self._timeline(workflow_id(account_id))
        except RPCError as error:
            if error.status not in _NOT_ANSWERING:
                raise
            log.warning("account %s: its workflow history could not be read: %s", account_id, error)
            raise errors.UNAVAILABLE() from None

    async def _timeline(self, wid: str) -> list[TimelineRow]:
        client = self.users.client
        runs = [r async for r in client.list_workflows(f'WorkflowId = "{wid}"')]
        runs.sort(key=lambda r: r.start_time)
        rows: list[TimelineRow] = []
        for number, run in enumerate(runs, start=1):
            history = await client.get_workflow_handle(wid, run_id=run.run_id).fetch_history()
            for event in history.events:
                step = _TIMELINE_STEPS.get(event.event_type)
                if step is not None:
                    rows.append(
                        TimelineRow(
                            time=event.event_time.ToDatetime(UTC),
                            run=number,
                            step=step,
                            details=_event_details(event),
                        )
                    )
        return rows

    # -- acting (admins only)

    async def revoke_device(self, operator: OperatorView, account_id: str, device_id: str) -> None:
        """R11: one browser revoked by an admin; the others keep working."""
        if not operator.can_act:
            raise errors.READ_ONLY()
        await self.users.revoke_one_device(
            account_id, device_id, actor=operator.actor, reason="admin"
        )

    async def unlock(self, operator: OperatorView, account_id: str) -> None:
        if not operator.can_act:
            raise errors.READ_ONLY()
        await self.users.call_workflow(
            account_id, TwoFactorWorkflow.unlock, ActorRequest(actor=operator.actor)
        )

    async def disable(self, operator: OperatorView, account_id: str) -> DisabledView:
        if not operator.can_act:
            raise errors.READ_ONLY()
        async with self.db.read() as db:
            account = await account_queries.account_by_id(db, account_id)
        if account is None:
            raise errors.ACCOUNT_NOT_FOUND()
        return await self.users.disable(account, confirm=True, actor=operator.actor)


def _operator_view(operator: Operator) -> OperatorView:
    """An operator as the dashboard and the audit trail (its ``actor``) name it."""
    return OperatorView(id=operator.id, email=operator.email, role=operator.role)


def _event_details(event: HistoryEvent) -> str:
    """Names and durations only: payloads stay out of the timeline (S4)."""
    kind = event.WhichOneof("attributes")
    if kind is None:
        return ""
    attributes = getattr(event, kind)
    if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
        return str(attributes.accepted_request.input.name)
    if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        return str(attributes.activity_type.name)
    if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
        return f"{attributes.start_to_fire_timeout.ToTimedelta().total_seconds():g} s"
    if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
        payload = attributes.search_attributes.indexed_fields.get(STATE_SEARCH_ATTRIBUTE)
        return f"now {json.loads(payload.data)}" if payload else ""
    if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
        outcome = MessageToDict(attributes.outcome)
        return "refused" if "failure" in outcome else "done"
    return ""
