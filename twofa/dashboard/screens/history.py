"""History, for auditors: the account's workflow history as a timeline beside its audit trail.

The timeline covers every run of the account's workflow (each enrollment, each continue-as-new)
and names steps and durations only, never a payload (S4). Both download as JSON and CSV.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd
import streamlit as st
from pydantic import BaseModel

from twofa.dashboard import ui
from twofa.views import AccountDetail, AuditRow, TimelineRow

ui.require_operator()
st.title("History")


def _history(account_id: str) -> tuple[AccountDetail, list[TimelineRow], list[AuditRow]]:
    return (
        ui.call(lambda a: a.account(account_id)),
        ui.call(lambda a: a.timeline(account_id)),
        ui.call(lambda a: a.audit_trail(account_id)),
    )


detail, timeline, trail = ui.load_account("history_pick", "history.py", _history)
account_id = detail.account.id


def readable(details: str) -> str:
    """An audit record's details as ``key: value`` pairs instead of raw JSON."""
    try:
        values = json.loads(details)
    except ValueError:
        return details
    if not isinstance(values, dict):
        return details
    return ", ".join(f"{key}: {value}" for key, value in values.items())


def downloads(name: str, rows: Sequence[BaseModel], model: type[BaseModel], key: str) -> None:
    """JSON keeps the records as they are; CSV opens in a spreadsheet."""
    stem = f"{name}-{detail.account.email}"
    json_col, csv_col = st.columns(2)
    json_col.download_button(
        "Download JSON",
        ui.as_json(rows),
        file_name=f"{stem}.json",
        mime="application/json",
        key=f"{key}_json",
        icon=":material/download:",
        on_click="ignore",
        width="stretch",
    )
    csv_col.download_button(
        "Download CSV",
        ui.as_csv(rows, model),
        file_name=f"{stem}.csv",
        mime="text/csv",
        key=f"{key}_csv",
        icon=":material/download:",
        on_click="ignore",
        width="stretch",
    )


st.subheader(ui.md(detail.account.email), anchor=False)
st.caption(
    f"2FA state: {ui.state_label(detail.account.state)} · id `{detail.account.id}` · times in UTC"
)
st.page_link(
    ui.SCREENS / "account.py",
    label="Back to the account",
    icon=":material/person:",
    query_params={"id": account_id},
)

timeline_col, audit_col = st.columns([2, 3])
with timeline_col:
    st.subheader(f"Workflow timeline ({len(timeline)} steps)")
    if timeline:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "time": ui.when(row.time),
                        "run": row.run,
                        "step": row.step,
                        "details": row.details,
                    }
                    for row in timeline
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("No workflow yet: 2FA was never enabled for this account.")
    downloads("timeline", timeline, TimelineRow, "timeline")
with audit_col:
    st.subheader(f"Audit trail ({len(trail)} records)")
    if trail:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "#": row.seq,
                        "time": ui.when(row.time),
                        "actor": row.actor,
                        "event": row.event,
                        "details": readable(row.details),
                    }
                    for row in trail
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("No audit record for this account.")
    downloads("audit-trail", trail, AuditRow, "audit")
