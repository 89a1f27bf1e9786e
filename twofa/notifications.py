"""The worker's notifier: sends the S10 mails queued in the store's outbox.

A step writes its notification in its own transaction (``notification_queries.notify``), so a
mail is never lost with a crash and never holds up a login. The notifier claims due mails, sends
each, and records the outcome: sent; due again later after a transient refusal (the relay
busy or down, with a growing delay); or failed for good after a permanent one, which is
audited. A crash between sending and recording sends that mail again, with the same
Message-ID, so a mailbox can tell it is the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from twofa import audit
from twofa.config import Settings
from twofa.mail import (
    MailRefused,
    browser_enrolled,
    deliver,
    two_factor_disabled,
    two_factor_locked,
)
from twofa.observability import REQUEST_ID
from twofa.store import notification_queries
from twofa.store.db import Database
from twofa.store.models import Notification

log = logging.getLogger(__name__)

BROWSER_ENROLLED = "browser_enrolled"
TWO_FACTOR_DISABLED = "two_factor_disabled"
TWO_FACTOR_LOCKED = "two_factor_locked"

#: The most mails one round sends before it looks at ``stop`` and the outbox again.
ROUND = 20
#: SMTP exchanges a send may make, each allowed ``TWOFA_SMTP_TIMEOUT_SECONDS``: connect,
#: EHLO, STARTTLS, EHLO, AUTH (two), MAIL, RCPT, DATA and its end, QUIT, and one to spare.
SEND_EXCHANGES = 12
IDLE_POLL_SECONDS = 0.5


def claim_for(settings: Settings) -> timedelta:
    """How long a claim keeps a mail from other notifiers: longer than one send can take."""
    return timedelta(seconds=max(120.0, SEND_EXCHANGES * settings.smtp_timeout_seconds))


def retry_delay(attempts: int) -> timedelta:
    """2 s, 4 s, 8 s … up to 10 minutes between tries of a mail the relay did not take."""
    return timedelta(seconds=min(2**attempts, 600))


def compose(notification: Notification, sender: str) -> EmailMessage:
    details = json.loads(notification.details)
    when = notification.created_at
    to, key = notification.to_address, notification.id
    if notification.kind == BROWSER_ENROLLED:
        return browser_enrolled(
            sender=sender, to=to, device_name=details.get("device_name"), when=when, key=key
        )
    if notification.kind == TWO_FACTOR_DISABLED:
        return two_factor_disabled(
            sender=sender, to=to, by_admin=bool(details.get("by_admin")), when=when, key=key
        )
    until = details.get("locked_until")
    return two_factor_locked(
        sender=sender,
        to=to,
        locked_until=datetime.fromisoformat(until) if until else None,
        when=when,
        key=key,
    )


async def send_due(settings: Settings, db: Database, stop: asyncio.Event) -> int:
    """One round: due mails claimed one at a time, each sent and recorded, until none is due,
    ``ROUND`` were sent or ``stop`` is set; returns how many were claimed.

    One at a time: a claim covers one send, which it outlasts however slow the relay, where a
    batch's claim could lapse while its last mails waited, and another notifier would send
    them too. Once ``stop`` is set, the mail being sent is finished and recorded.
    """
    claimed = 0
    while claimed < ROUND and not stop.is_set():
        now = datetime.now(UTC)
        async with db.write() as session:
            due = await notification_queries.claim_notification(
                session, now, now + claim_for(settings)
            )
        if due is None:
            break
        claimed += 1
        await _send(settings, db, due)
    return claimed


async def _send(settings: Settings, db: Database, notification: Notification) -> None:
    """Sends one mail under the id of the request that queued it: its log line and its audit
    record carry that id, as the step's own records do."""
    token = REQUEST_ID.set(notification.request_id)
    try:
        await _deliver_and_record(settings, db, notification)
    finally:
        REQUEST_ID.reset(token)


async def _deliver_and_record(settings: Settings, db: Database, notification: Notification) -> None:
    message = compose(notification, settings.mail_from)
    error: MailRefused | None = None
    try:
        await deliver(message, settings)
    except MailRefused as refused:
        error = refused
    now = datetime.now(UTC)
    retry_at = now + retry_delay(notification.attempts) if error and not error.permanent else None
    async with db.write() as session:
        await notification_queries.notification_done(
            session,
            notification.id,
            now,
            sent=error is None,
            error=str(error) if error else None,
            retry_at=retry_at,
        )
        if error is None or retry_at is None:
            await audit.append(
                session,
                "notification_sent" if error is None else "notification_failed",
                account_id=notification.account_id,
                actor="system",
                kind=notification.kind,
                message_id=message["Message-ID"],
                **({"reason": str(error)} if error else dict[str, Any]()),
            )
    if error is None:
        log.info("%s mail sent for account %s", notification.kind, notification.account_id)


async def run_notifier(settings: Settings, db: Database, stop: asyncio.Event) -> None:
    """Drains the outbox until ``stop`` is set; a failed round is logged and tried again.

    It stops between mails, never by cancellation: a mail cut off while being sent would be
    sent again later, and on Python 3.11 a cancellation that arrives as one of aiosmtplib's
    ``asyncio.wait_for`` calls completes is lost (CPython gh-86296), which left a cancelled
    notifier running, and the worker's stop waiting on it, for ever.
    """
    while not stop.is_set():
        try:
            tried = await send_due(settings, db, stop)
        except Exception:
            log.exception("notifier round failed; trying again")
            tried = 0
        if not tried:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_SECONDS):
                    await stop.wait()
