"""Real parts for every test: a Temporal dev server, an SMTP sink, the database, worker and API.

All run on loopback in this test session; timers are shortened through settings, never faked.
The database is SQLite, or with ``TWOFA_TEST_DATABASE=postgresql`` a PostgreSQL server started
from Debian's packages: the same tests run on both backends (``make test`` runs both).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from pytest_asyncio import is_async_test
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.support import postgres
from tests.support.journey import Api
from tests.support.processes import free_port, serve_api
from twofa.config import Settings
from twofa.devstack import POLLS_END_ON_SHUTDOWN, start_smtp_sink, temporal_binary
from twofa.store.db import Database, migrate
from twofa.temporal import serving
from twofa.workflows.two_factor import STATE_KEY

SERVICE_TOKEN = "test-service-token-0123456789"
PEPPER = "test-pepper-do-not-use-in-production"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A plain (not async) test runs on a thread while the session's event loop goes on.

    The session's worker and API servers live on that loop; a plain test that held it for
    seconds (a subprocess, the bench smoke test) stalled them mid-step, so workflow tasks timed
    out and the SDK later warned of local activities it could no longer cancel.
    """
    if is_async_test(pyfuncitem):
        return None
    runner = pyfuncitem._request.getfixturevalue("_session_scoped_runner")
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    runner.run(asyncio.to_thread(pyfuncitem.obj, **arguments))
    return True


class LogCapture(logging.Handler):
    """Every log line of the session, to prove no secret reaches a log (S4)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session")
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    root = logging.getLogger()
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    yield capture
    root.removeHandler(capture)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
async def temporal() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=[STATE_KEY],
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=WAL", *POLLS_END_ON_SHUTDOWN],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def smtp(data_dir: Path) -> Iterator[int]:
    port = free_port()
    controller = start_smtp_sink(data_dir / "mail", "127.0.0.1", port)
    yield port
    controller.stop()


BACKEND = os.environ.get("TWOFA_TEST_DATABASE", "sqlite")


@pytest.fixture(scope="session")
def database_url(data_dir: Path) -> Iterator[str]:
    if BACKEND == "sqlite":
        yield f"sqlite:///{data_dir / 'twofa.db'}"
        return
    assert BACKEND == "postgresql", f"unknown TWOFA_TEST_DATABASE {BACKEND!r}"
    with postgres.throwaway_server("twofa-postgres-") as url:
        yield url


@pytest.fixture(scope="session")
def stored_bytes(database_url: str, data_dir: Path) -> Callable[[], bytes]:
    """Everything the database holds, raw, to prove what it never stores in plaintext."""

    def read() -> bytes:
        if BACKEND == "postgresql":
            return postgres.dump(database_url)
        files = (data_dir / "twofa.db", data_dir / "twofa.db-wal")
        return b"".join(f.read_bytes() for f in files if f.exists())

    return read


@pytest.fixture(scope="session")
def base_settings(
    data_dir: Path, database_url: str, temporal: WorkflowEnvironment, smtp: int
) -> Settings:
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        temporal_address=temporal.client.service_client.config.target_host,
        smtp_port=smtp,
        service_token=SERVICE_TOKEN,
        pepper=PEPPER,
        auto_logout_seconds=1.5,
        workflow_call_timeout_seconds=20,
    )
    migrate(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="session")
async def database(base_settings: Settings) -> AsyncIterator[Database]:
    db = Database(base_settings.resolved_database_url)
    yield db
    await db.dispose()


@pytest.fixture(scope="session")
async def worker(
    temporal: WorkflowEnvironment, base_settings: Settings, database: Database, logs: LogCapture
) -> AsyncIterator[None]:
    async with serving(temporal.client, base_settings, database):
        yield


@pytest.fixture(scope="session")
def client(temporal: WorkflowEnvironment) -> Client:
    return temporal.client


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture(scope="session")
async def start_api(
    base_settings: Settings, worker: None, data_dir: Path
) -> AsyncIterator[ApiFactory]:
    """Starts (once per distinct settings) a real uvicorn server on a loopback port."""
    servers: dict[tuple[tuple[str, Any], ...], Api] = {}
    tasks: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> Api:
        key = tuple(sorted(overrides.items()))
        if key not in servers:
            settings = base_settings.model_copy(update={"api_port": free_port(), **overrides})
            tasks.append(await serve_api(settings))
            servers[key] = Api(f"http://127.0.0.1:{settings.api_port}", SERVICE_TOKEN, data_dir)
        return servers[key]

    yield start
    for server, task in tasks:
        server.should_exit = True
        await task
    for api in servers.values():
        await api.close()


@pytest.fixture
async def api(start_api: ApiFactory) -> Api:
    return await start_api()
