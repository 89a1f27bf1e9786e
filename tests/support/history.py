"""Reading a workflow's history: what its updates left there, or did not."""

from __future__ import annotations

import json
from collections.abc import Iterable

from temporalio.api.common.v1 import Header
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import default as default_converter

from twofa.temporal_context import HEADER

CONVERTER = default_converter().payload_converter


def update_refusals(events: Iterable[HistoryEvent]) -> list[str]:
    """The failure types of the workflow's completed updates, oldest first."""
    refusals = []
    for event in events:
        if event.HasField("workflow_execution_update_completed_event_attributes"):
            outcome = event.workflow_execution_update_completed_event_attributes.outcome
            if outcome.HasField("failure"):
                refusals.append(outcome.failure.application_failure_info.type)
    return refusals


def accepted_updates(events: Iterable[HistoryEvent]) -> list[str]:
    """The ids of the updates the workflow accepted (its validators let through), oldest first."""
    return [
        event.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        for event in events
        if event.HasField("workflow_execution_update_accepted_event_attributes")
    ]


def events_naming(events: Iterable[HistoryEvent], text: str) -> list[HistoryEvent]:
    """The events that carry ``text`` anywhere (an update's id, its argument, its outcome)."""
    needle = text.encode()
    return [event for event in events if needle in event.SerializeToString()]


def header_id(header: Header) -> str | None:
    """The request id a call or an activity carries in its Temporal header, if any."""
    if HEADER not in header.fields:
        return None
    return str(CONVERTER.from_payload(header.fields[HEADER], str))


def activities_run(events: Iterable[HistoryEvent]) -> list[tuple[str, str, bool]]:
    """The workflow's activities, oldest first: ``("local", type, failed)`` for each local
    activity (its marker), ``("remote", type, False)`` for each remote one scheduled."""
    runs = []
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == "core_local_activity":
                data = json.loads(marker.details["data"].payloads[0].data)
                runs.append(("local", data["activity_type"], marker.HasField("failure")))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            runs.append(("remote", name, False))
    return runs
