"""The project's own processes (`twofa worker`, `twofa api`) started for a test, and stopped.

The bench starts its stack with the same helpers (``free_port``, ``stop_process``).
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from tests.support.journey import eventually
from twofa.api import create_app
from twofa.config import Settings

#: The repository's top folder (the Makefile, README.md, bench/, docker-compose.yml).
REPO = Path(__file__).resolve().parents[2]
TWOFA = str(Path(sys.executable).parent / "twofa")


#: What a child process shares with the test's system: where its parts are, and its secrets;
#: its timers keep their defaults unless a test hands them over.
SHARED = (
    "data_dir",
    "database_url",
    "temporal_address",
    "temporal_task_queue",
    "smtp_port",
    "service_token",
    "pepper",
    "api_port",
)


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The TWOFA_* variables that make a child process see what ``settings`` describe."""
    return settings.environment(SHARED, **extra)


#: Where the kernel draws the local ports of outgoing connections (and of a bind to port 0).
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PORTS = random.SystemRandom()  # not the test's seeded generator: each run draws afresh
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range, never handed out twice by
    this process. A port the kernel picks for port 0 comes from that range, where any outgoing
    connection (a client, a driver) may take it before the server meant to bind it does: a
    dev server's UI port was once "already in use" that way."""
    low = _ephemeral_ports_start()
    for _ in range(1000):
        port = _PORTS.randrange(max(1024, low - 16384), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def _ephemeral_ports_start() -> int:
    try:
        return int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def listening(port: int) -> bool:
    """Something accepts connections on that loopback port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def exited(process: subprocess.Popen[bytes], timeout: float | None = None) -> int:
    """Waits for ``process`` to end without blocking the event loop; its exit code.

    A test's loop must keep running while a child stops: a child that commits on its way out
    (the worker's notifier) waits on SQLite locks that this process's own tasks may hold, and
    a loop blocked in ``wait()`` would hold them until the child is killed (seen in CI).
    """
    return await asyncio.to_thread(process.wait, timeout)


async def stop_process(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, time for a graceful shutdown, then SIGKILL; the exit code of that stop, or None
    when the process had ended before it. The waits leave the event loop running (``exited``)."""
    if process.poll() is not None:
        return None
    process.send_signal(signal.SIGTERM)
    try:
        return await exited(process, timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return await exited(process)


@asynccontextmanager
async def started(
    command: list[str], env: dict[str, str], log: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Runs ``command`` for the block, then stops it and asserts that it stopped cleanly."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        code = await stop_process(process)
    # uvicorn ends by raising the SIGTERM it caught once its shutdown is done, hence -SIGTERM
    clean = (0, -signal.SIGTERM, None)
    assert code in clean, f"{command[1:]} stopped with {code}: {log.read_text()[-2000:]}"


async def worker_polls(
    client: Client,
    task_queue: str,
    process: subprocess.Popen[bytes],
    log: Path,
    interval: float = 0.1,
) -> None:
    """Waits until that process's worker polls ``task_queue`` (its identity is pid@host)."""

    async def polling() -> bool:
        assert process.poll() is None, f"worker exited: {log.read_text()[-3000:]}"
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            # the SDK's retry: a call in flight when the server closes an old connection
            # (GOAWAY) fails CANCELLED "operation was canceled" and is retried once
            # (temporalio/sdk-core#807); without it, seen once in a clean-clone run
            retry=True,
        )
        return any(p.identity.startswith(f"{process.pid}@") for p in described.pollers)

    await eventually(polling, "the worker polls", timeout=60, interval=interval)


async def wait_for_http(
    url: str, timeout: float = 60, alive: Callable[[], None] | None = None
) -> None:
    """Waits until ``url`` answers 200 (a part's health endpoint once it serves); ``alive``,
    called before each try, raises at once when a part the wait depends on has died."""
    async with httpx.AsyncClient(timeout=2) as http:

        async def answers() -> bool:
            if alive is not None:
                alive()
            try:
                return (await http.get(url)).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(answers, f"{url} to answer 200", timeout=timeout, interval=0.2)


async def serve_api(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """A real uvicorn server of the API in this event loop, once it accepts connections; stop
    it with ``server.should_exit = True`` and await the task."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.api_port, log_level="info"
        )
    )
    task = asyncio.create_task(server.serve())

    def accepting() -> bool:
        if task.done():
            task.result()  # its startup failed: say why
        return server.started

    await eventually(accepting, f"the API on port {settings.api_port} to start", interval=0.02)
    return server, task
