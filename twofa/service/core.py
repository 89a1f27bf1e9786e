"""What every part of the service shares: its dependencies, the workflow call, sessions made."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

from anyio import CapacityLimiter, to_thread
from temporalio.client import Client, RPCTimeoutOrCancelledError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.workflow import UpdateMethodMultiParam

from twofa import audit, errors
from twofa.config import Settings
from twofa.crypto import Keyring, new_token
from twofa.policy import effective_state
from twofa.store.db import Database
from twofa.store.models import Account, Session
from twofa.vocabulary import TwoFactorState
from twofa.workflows.messages import workflow_id

log = logging.getLogger(__name__)
T = TypeVar("T")
A = TypeVar("A")


@dataclass(frozen=True)
class CurrentSession:
    session: Session
    account: Account


def utcnow() -> datetime:
    return datetime.now(UTC)


def state_of(account: Account, now: datetime) -> TwoFactorState:
    """The account's 2FA state as the rules read it now (``policy.effective_state``)."""
    return effective_state(account.two_factor_state, account.locked_until, now)


class ServiceCore:
    """The settings, store, Temporal client and keyring; the calls every part makes."""

    def __init__(self, settings: Settings, db: Database, client: Client) -> None:
        self.settings = settings
        self.db = db
        self.client = client
        self.keyring = Keyring.of(settings)
        db.audit = db.audit or audit.chain_for(settings, self.keyring)
        self._kdf_limiter = CapacityLimiter(os.cpu_count() or 1)
        self.policy = settings.policy

    async def kdf(self, function: Callable[..., T], *args: Any) -> T:
        """argon2 in a worker thread, one per CPU at most: each call holds 19 MiB, and more
        threads than CPUs only add memory, not throughput."""
        return await to_thread.run_sync(function, *args, limiter=self._kdf_limiter)

    def _new_session(
        self, account_id: str, device_id: str | None, now: datetime, token: str | None = None
    ) -> tuple[str, Session]:
        """A session row to add in the caller's transaction, and the token only its owner gets
        (``token``: one derived from a login id, for the step's repeat to find, S9)."""
        token = token or new_token()
        session = Session(
            id=str(uuid.uuid4()),
            account_id=account_id,
            device_id=device_id,
            token_digest=self.keyring.digest("session", token),
            pepper_id=self.keyring.id,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.session_ttl_seconds),
        )
        return token, session

    async def _audit(self, event: str, account_id: str | None, **details: Any) -> None:
        """An audit record for a refusal, which changes nothing else."""
        async with self.db.write() as db:
            await audit.append(db, event, account_id=account_id, actor="user", **details)

    def _seal_of(self, account: Account) -> str | None:
        """R8: shown to its owner at every 2FA login, before the PIN is asked."""
        return self.keyring.unseal(account.seal_ciphertext) if account.seal_ciphertext else None

    @overload
    async def call_workflow(
        self,
        account_id: str,
        update: UpdateMethodMultiParam[[Any], T],
        /,
        *,
        update_id: str | None = None,
    ) -> T: ...

    @overload
    async def call_workflow(
        self,
        account_id: str,
        update: UpdateMethodMultiParam[[Any, A], T],
        arg: A,
        /,
        *,
        update_id: str | None = None,
    ) -> T: ...

    async def call_workflow(
        self,
        account_id: str,
        update: UpdateMethodMultiParam[..., T],
        /,
        *args: Any,
        update_id: str | None = None,
    ) -> T:
        """``update_id`` names the request: the server runs a repeated one once, and a caller
        who repeats it after a 503 or a lost answer gets the first one's result (S9).

        Typed as the SDK's ``execute_update``: an update without its argument, or with one of
        the wrong type, does not type-check."""
        handle = self.client.get_workflow_handle(workflow_id(account_id))
        return await self._call(handle.execute_update(update, args=args, id=update_id))

    def _request_id(self, step: str, login_id: str, *parts: str) -> str:
        """A step's update id: keyed, so history never holds the login id it came from."""
        return f"{step}-{self.keyring.digest('update-id', chr(0).join((login_id, *parts)))}"

    async def _call(self, call: Awaitable[T]) -> T:
        """A workflow call, with its refusals turned into the contract's errors."""
        try:
            return await asyncio.wait_for(call, timeout=self.settings.workflow_call_timeout_seconds)
        except WorkflowUpdateFailedError as failure:
            cause = failure.cause
            reason = cause.type if isinstance(cause, ApplicationError) else None
            if reason in errors.WORKFLOW_REFUSALS:
                raise errors.WORKFLOW_REFUSALS[reason]() from None
            log.error("workflow update failed: %s", failure)
            raise errors.UNAVAILABLE() from None
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise errors.NOT_ENABLED() from None
            log.error("Temporal refused a call: %s", error.status)
            raise errors.UNAVAILABLE() from None
        except (TimeoutError, RPCTimeoutOrCancelledError):
            log.error(
                "workflow call timed out after %ss", self.settings.workflow_call_timeout_seconds
            )
            raise errors.UNAVAILABLE() from None
