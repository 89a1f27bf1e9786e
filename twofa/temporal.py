"""The one place a Temporal client is built, and the worker that serves the task queue."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, NoReturn

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode, TLSConfig
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner

from twofa.activities.effects import Effects
from twofa.activities.heartbeat import Heartbeats
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.notifications import run_notifier
from twofa.store.db import Database
from twofa.temporal_context import RequestIdClient, RequestIdWorker
from twofa.workflows.messages import STATE_SEARCH_ATTRIBUTE
from twofa.workflows.two_factor import TwoFactorWorkflow

log = logging.getLogger(__name__)


def connect_options(settings: Settings) -> dict[str, Any]:
    """Namespace, TLS (mTLS client certificate, private CA) and API key of a real cluster.

    TLS is on when asked for, or implied by a certificate, a CA or an API key (Temporal Cloud
    refuses API keys over plain text).
    """
    tls_files = (
        settings.temporal_tls_client_cert,
        settings.temporal_tls_client_key,
        settings.temporal_tls_server_ca,
    )
    if bool(settings.temporal_tls_client_cert) != bool(settings.temporal_tls_client_key):
        raise ValueError("TWOFA_TEMPORAL_TLS_CLIENT_CERT and _CLIENT_KEY go together")
    tls: bool | TLSConfig = settings.temporal_tls or bool(settings.temporal_api_key)
    if any(tls_files) or settings.temporal_tls_server_name:
        cert, key, ca = (path.read_bytes() if path else None for path in tls_files)
        tls = TLSConfig(
            server_root_ca_cert=ca,
            client_cert=cert,
            client_private_key=key,
            domain=settings.temporal_tls_server_name,
        )
    return {
        "namespace": settings.temporal_namespace,
        "tls": tls,
        "api_key": settings.temporal_api_key,
    }


def worker_runtime(settings: Settings) -> Runtime:
    """The worker's SDK runtime: its core's logs through Python logging (so they share the
    process's format, JSON included), and its Prometheus metrics when a port is set."""
    metrics = None
    if settings.worker_metrics_port is not None:
        metrics = PrometheusConfig(bind_address=f"{settings.host}:{settings.worker_metrics_port}")
    logs = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
    return Runtime(telemetry=TelemetryConfig(logging=logs, metrics=metrics))


async def connect(
    settings: Settings,
    *,
    wait: timedelta = timedelta(seconds=60),
    runtime: Runtime | None = None,
) -> Client:
    """Connect, waiting for a server that is still starting (the dev server takes a few seconds)."""
    deadline = asyncio.get_running_loop().time() + wait.total_seconds()
    options = connect_options(settings)
    while True:
        try:
            return await Client.connect(
                settings.resolved_temporal_address,
                runtime=runtime,
                interceptors=[RequestIdClient()],  # each workflow call names its HTTP request
                **options,
            )
        except RuntimeError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


def exit_without_teardown(code: int = 0) -> NoReturn:
    """Leave a process that held a Temporal client once its work is done and flushed.

    The SDK's Rust threads can call into Python while the interpreter finalizes, which aborts the
    process ("PyGILState_Release: thread state must be current", temporalio/sdk-python#300): a
    clean stop would end in SIGABRT or SIGSEGV and a half-written log line. Nothing is left to
    tear down.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@asynccontextmanager
async def connected(
    settings: Settings, *, runtime: Runtime | None = None, client: Client | None = None
) -> AsyncIterator[tuple[Database, Client]]:
    """The database engine and a Temporal client (``client`` when the caller holds one already,
    and keeps owning it); the engine is released on the way out."""
    db = Database(settings.resolved_database_url)
    try:
        yield db, client or await connect(settings, runtime=runtime)
    finally:
        await db.dispose()


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register the state attribute on a server that lacks it; a dev server has it already."""
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={
                    STATE_SEARCH_ATTRIBUTE: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                },
            ),
            retry=True,  # idempotent; rides out a transient failure as the SDK's own calls do
        )
    except RPCError as error:
        if error.status != RPCStatusCode.ALREADY_EXISTS:
            raise


#: The worker runs the workflow outside the SDK's sandbox. The sandbox re-imports the workflow's
#: modules into fresh globals for every new workflow and runs each activation through them: 20-39
#: of the worker's ~130 CPU-ms per journey (bench, issue 12). What it guards against (a clock,
#: random numbers or I/O in workflow code) the replay tests still catch: they run every recorded
#: history in the sandbox, and under this runner as well.
WORKFLOW_RUNNER: WorkflowRunner = UnsandboxedWorkflowRunner()


def build_worker(client: Client, settings: Settings, db: Database) -> Worker:
    effects = Effects(settings, db, Keyring.of(settings))
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[TwoFactorWorkflow],
        workflow_runner=WORKFLOW_RUNNER,
        activities=effects.all(),
        # outermost first: an activity serves under its request id while it heartbeats too
        interceptors=[RequestIdWorker(), Heartbeats()],
        graceful_shutdown_timeout=timedelta(seconds=10),
        # A workflow task waits this long on a dead worker's sticky queue before any worker may
        # take it: the SDK's 10 s alone missed issue 10's "≤ 10 s once a worker is back" (bench
        # recovery); a live worker takes its sticky tasks in milliseconds, so 5 s costs nothing.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=5),
        max_cached_workflows=500,  # bounds memory; an evicted workflow is replayed on use
    )


@asynccontextmanager
async def serving(client: Client, settings: Settings, db: Database) -> AsyncIterator[None]:
    """The worker's two jobs: the task queue, and the notifier's outbox of S10 mails."""
    async with build_worker(client, settings, db):
        stop = asyncio.Event()
        notifier = asyncio.create_task(run_notifier(settings, db, stop))
        try:
            yield
        finally:
            stop.set()  # not cancel(): see run_notifier
            await notifier


async def run_worker(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then let running activities finish (graceful shutdown)."""
    async with connected(settings, runtime=worker_runtime(settings)) as (db, client):
        await ensure_search_attributes(client, settings.temporal_namespace)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "worker polling %s on %s",
            settings.temporal_task_queue,
            settings.resolved_temporal_address,
        )
        async with serving(client, settings, db):
            await stop.wait()
