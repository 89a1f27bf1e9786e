"""The engine floor's worker process: ``python -m bench.floor_worker HOST:PORT``.

Built like ``twofa.temporal.build_worker`` (SDK defaults for slots, pollers and cache), serving
only the bare workflow, until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from bench.floor import TASK_QUEUE, EnrollmentShape, noop
from twofa.temporal import exit_without_teardown


async def serve(address: str) -> None:
    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[EnrollmentShape],
        activities=[noop],
        graceful_shutdown_timeout=timedelta(seconds=10),
    ):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
    exit_without_teardown()
