"""Every activity heartbeats while it runs longer than a moment, so a dead worker shows fast.

Without heartbeats, a step whose worker is SIGKILLed waits out the whole start-to-close timeout
before Temporal retries it elsewhere; with them, it waits ``HEARTBEAT_TIMEOUT`` at most. Quick
activities (most take milliseconds) finish before their first beat and cost no extra call.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

HEARTBEAT_TIMEOUT = timedelta(seconds=3)
_BEAT_EVERY = HEARTBEAT_TIMEOUT.total_seconds() / 3


class Heartbeats(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Heartbeating(next)


class _Heartbeating(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if activity.info().is_local:
            # no heartbeats there: the SDK keeps the workflow task alive while it runs
            return await super().execute_activity(input)

        async def beat() -> None:
            while True:
                await asyncio.sleep(_BEAT_EVERY)
                activity.heartbeat()

        beating = asyncio.create_task(beat())
        try:
            return await super().execute_activity(input)
        finally:
            beating.cancel()
