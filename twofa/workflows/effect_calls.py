"""How the workflow runs its effects: which kind of activity, with what timeouts and retries, and
how an effect's permanent refusal becomes the update's refusal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityHandle

with workflow.unsafe.imports_passed_through():
    from twofa.activities.effects import Effects
    from twofa.activities.heartbeat import HEARTBEAT_TIMEOUT
    from twofa.workflows.messages import CodeMail
    from twofa.workflows.patches import PATCH_LOCAL_EFFECTS, PATCH_LOCAL_MAIL_FIRST

T = TypeVar("T")
#: Transient failures (the database away, a relay saying "try later") are retried until they
#: pass; permanent ones are raised non-retryable by the activity and handled here.
EFFECT_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)
#: Generous for a slow database or relay: a dead worker is found by its missing heartbeats.
EFFECT_TIMEOUT = timedelta(seconds=30)
#: The mail's first try, inside the workflow task: one try only, since a local activity's
#: retries keep the workflow task alive with new history events while they wait.
FIRST_TRY = RetryPolicy(maximum_attempts=1)


async def run_effect(activity: Callable[[Any, Any], Awaitable[T]], arg: Any) -> T:
    """Database writes run as local activities: no trip through the server per effect.

    Timeouts and retries are not part of a history's commands: changing them is safe; the
    kind of activity is, hence the patch (memoized per run: a run that began with remote
    effects keeps them). The mail is a remote activity here; ``mail_code`` tries it locally
    first.
    """
    if activity is not Effects.send_activation_code and workflow.patched(PATCH_LOCAL_EFFECTS):
        return await workflow.execute_local_activity_method(
            activity, arg, start_to_close_timeout=EFFECT_TIMEOUT, retry_policy=EFFECT_RETRY
        )
    return await _start_remote(activity, arg)


def _start_remote(activity: Callable[[Any, Any], Awaitable[T]], arg: Any) -> ActivityHandle[T]:
    return workflow.start_activity_method(
        activity,
        arg,
        start_to_close_timeout=EFFECT_TIMEOUT,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=EFFECT_RETRY,
    )


async def mail_code(mail: CodeMail) -> str:
    """Mails a code; returns its digest. The first try runs inside the workflow task, which
    spares the enable a trip through the server when the relay answers at once (the usual
    case); a relay that says "try later", or does not answer, is retried as a remote activity,
    with backoff and no new history event per try, for as long as it takes. The mail activity
    is idempotent (keyed by enrollment and code number, the same code each time), so the
    remote tries may follow a local one that got as far as the relay.

    How runs from before ``PATCH_MAIL_RETRIED_AFTER_THE_STEP`` mail: the step waits for the
    retries. Later runs call ``first_mail_try`` and ``start_mail_retries`` themselves.
    """
    if workflow.patched(PATCH_LOCAL_MAIL_FIRST):
        digest = await first_mail_try(mail)
        if digest is not None:
            return digest
    return await run_effect(Effects.send_activation_code, mail)


async def first_mail_try(mail: CodeMail) -> str | None:
    """One try inside the workflow task; the code's digest once the relay took the mail, None
    when it said "try later" or did not answer. A permanent refusal (the address refused, the
    account gone) is raised as it is, and so is a cancellation: a cancelled step does not go on
    to mail."""
    try:
        return await workflow.execute_local_activity_method(
            Effects.send_activation_code,
            mail,
            start_to_close_timeout=EFFECT_TIMEOUT,
            retry_policy=FIRST_TRY,
        )
    except (ActivityError, ApplicationError) as failure:
        if is_permanent(failure) or isinstance(_cause(failure), CancelledError):
            raise
        return None


def start_mail_retries(mail: CodeMail) -> ActivityHandle[str]:
    """The mail's remote tries, with backoff and no history event per try, until the relay
    takes it or refuses it for good; the caller cancels them when the code is no longer
    awaited."""
    return _start_remote(Effects.send_activation_code, mail)


def _cause(failure: ActivityError | ApplicationError) -> BaseException | None:
    """What the activity failed with: a remote activity's failure, and a local one's timeout or
    cancellation, come wrapped in an ``ActivityError``; a local one's own error comes as the
    activity raised it."""
    return failure.cause if isinstance(failure, ActivityError) else failure


def is_permanent(failure: ActivityError | ApplicationError) -> bool:
    """The activity refused for good (non-retryable), as opposed to failing this time."""
    cause = _cause(failure)
    return isinstance(cause, ApplicationError) and cause.non_retryable


def refusal(failure: ActivityError | ApplicationError) -> ApplicationError:
    """An activity's permanent refusal, as the update's refusal of the same kind."""
    cause = _cause(failure)
    kind = cause.type if isinstance(cause, ApplicationError) else None
    return ApplicationError(str(cause), type=kind or "effect_failed", non_retryable=True)
