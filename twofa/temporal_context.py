"""The request id travels with the work it causes: API call, workflow handler, activity.

The API puts the current ``REQUEST_ID`` in a header of each workflow call it makes; an update
or signal handler reads it and hands it to the activities that handler schedules; an activity
serves under it, so its log lines and the audit records it writes name the HTTP request that
caused them. Headers are not commands: a workflow's history replays the same with or without
them, and no workflow code changes. The work the workflow does on its own (timers: the
auto-logout, a lock running out) runs under no request id, since no request caused it.

A header sent with a call is stored in the workflow's history with it. A request id is no
secret, and it is the only thing these interceptors ever put there. An id read back from a
header must look like one (``SANE_REQUEST_ID``), as an incoming ``X-Request-ID`` must.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Interceptor as ClientInterceptor,
)
from temporalio.client import (
    OutboundInterceptor,
    QueryWorkflowInput,
    SignalWorkflowInput,
    StartWorkflowInput,
    StartWorkflowUpdateInput,
    StartWorkflowUpdateWithStartInput,
    WorkflowHandle,
    WorkflowUpdateHandle,
)
from temporalio.converter import PayloadConverter
from temporalio.converter import default as default_converter
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    HandleSignalInput,
    HandleUpdateInput,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)
from temporalio.worker import (
    Interceptor as WorkerInterceptor,
)

from twofa.observability import REQUEST_ID, SANE_REQUEST_ID

#: The header's name in every call, workflow history and activity task.
HEADER = "twofa-request-id"

Headers = Mapping[str, Payload]


def with_request_id(headers: Headers, converter: PayloadConverter) -> Headers:
    """``headers`` plus the current request id, if there is one."""
    request_id = REQUEST_ID.get()
    if request_id is None:
        return headers
    return {**headers, HEADER: converter.to_payload(request_id)}


def request_id_in(headers: Headers, converter: PayloadConverter) -> str | None:
    """The request id a header carries, if it holds one that looks like an id; one that
    cannot be read is none, so a stray header never fails the work it came with."""
    payload = headers.get(HEADER)
    if payload is None:
        return None
    try:
        value = converter.from_payload(payload)
    except (KeyError, RuntimeError):  # an unknown encoding, or not JSON
        return None
    return value if isinstance(value, str) and SANE_REQUEST_ID.fullmatch(value) else None


@contextmanager
def serving(headers: Headers, converter: PayloadConverter) -> Iterator[None]:
    """Runs the body under the headers' request id; under none when they carry none, so no id
    is ever inherited from whatever ran before on the same thread or task."""
    token = REQUEST_ID.set(request_id_in(headers, converter))
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class RequestIdClient(ClientInterceptor):
    """For the client of the API (and any other caller): each workflow call names its request."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _ClientOutbound(next)


class _ClientOutbound(OutboundInterceptor):
    """The client has no payload converter of its own here: the default is what the worker's
    client uses too (``twofa.temporal.connect`` sets none)."""

    converter = default_converter().payload_converter

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        input.headers = with_request_id(input.headers, self.converter)
        return await super().start_workflow(input)

    async def start_workflow_update(
        self, input: StartWorkflowUpdateInput
    ) -> WorkflowUpdateHandle[Any]:
        input.headers = with_request_id(input.headers, self.converter)
        return await super().start_workflow_update(input)

    async def start_update_with_start_workflow(
        self, input: StartWorkflowUpdateWithStartInput
    ) -> WorkflowUpdateHandle[Any]:
        start, update = input.start_workflow_input, input.update_workflow_input
        start.headers = with_request_id(start.headers, self.converter)
        update.headers = with_request_id(update.headers, self.converter)
        return await super().start_update_with_start_workflow(input)

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        input.headers = with_request_id(input.headers, self.converter)
        await super().signal_workflow(input)

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        input.headers = with_request_id(input.headers, self.converter)
        return await super().query_workflow(input)


class RequestIdWorker(WorkerInterceptor):
    """For the worker: handlers pass their request id on to activities, which serve under it."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _WorkflowInbound


class _WorkflowInbound(WorkflowInboundInterceptor):
    """Each update and signal handler runs in a task of its own: the id set here is seen by
    that handler alone, and by the activities it awaits. The run method is left under none."""

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound))

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        with serving(input.headers, workflow.payload_converter()):
            return await super().handle_update_handler(input)

    async def handle_signal(self, input: HandleSignalInput) -> None:
        with serving(input.headers, workflow.payload_converter()):
            await super().handle_signal(input)


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = with_request_id(input.headers, workflow.payload_converter())
        return super().start_activity(input)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = with_request_id(input.headers, workflow.payload_converter())
        return super().start_local_activity(input)


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        with serving(input.headers, activity.payload_converter()):
            return await super().execute_activity(input)
