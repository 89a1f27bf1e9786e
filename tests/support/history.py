"""Reading a workflow's history: what its updates left there, or did not."""

from __future__ import annotations

from collections.abc import Iterable

from temporalio.api.history.v1 import HistoryEvent


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
