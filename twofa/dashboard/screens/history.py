"""History, for auditors: the account's story, told from its audit trail in the document's words.

Each line carries its audit record's number; the records as stored and the engine's own steps
(every run of the account's workflow: names and durations only, never a payload, S4) are one
click away, in expanders. Both download as JSON and CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st
from pydantic import BaseModel

from twofa.dashboard import history_story, ui
from twofa.errors import ServiceError
from twofa.views import AccountDetail, AuditRow, TimelineRow

ui.require_operator()
st.title("History")


def _history(account_id: str) -> tuple[AccountDetail, list[AuditRow]]:
    return ui.call(lambda a: a.account(account_id)), ui.call(lambda a: a.audit_trail(account_id))


def _timeline(account_id: str) -> list[TimelineRow] | None:
    """The engine's steps; ``None`` while Temporal does not answer: the story and the audit
    trail come from the store, and an auditor still reads them."""
    try:
        return ui.call(lambda a: a.timeline(account_id))
    except ServiceError as error:
        if error.status != 503:
            raise
        return None


detail, trail = ui.load_account("history_pick", "history.py", _history)
timeline = _timeline(detail.account.id)
account_id = detail.account.id


def records_table(rows: list[dict[str, Any]], numbered: str) -> None:
    """Records in full, plain text (``st.dataframe`` renders no Markdown), details wide."""
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        height="content",
        column_config={
            numbered: st.column_config.NumberColumn(width="small"),
            "details": st.column_config.TextColumn(width="large"),
        },
    )


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

story = history_story.story(trail)
st.subheader(f"What happened ({history_story.plural(len(story), 'record')})")
if story:
    st.table(
        pd.DataFrame(
            [
                {
                    "record": line.seq,
                    "time (UTC)": ui.when(line.time),
                    # st.table renders its cells as Markdown: a browser's name is the user's
                    "what happened": ui.md(line.what),
                    "by": ui.md(line.by),
                }
                for line in story
            ]
        ),
        hide_index=True,
    )
else:
    st.caption("No audit record for this account.")

with st.expander(f"Audit records as stored ({len(trail)})", icon=":material/receipt_long:"):
    st.caption("Match a line above by its number; `twofa audit verify` checks the chain.")
    if trail:
        records_table(
            [
                {
                    "#": row.seq,
                    "time (UTC)": ui.when(row.time),
                    "actor": row.actor,
                    "event": row.event,
                    "details": row.details,
                    "request id": row.request_id,
                }
                for row in trail
            ],
            numbered="#",
        )
    downloads("audit-trail", trail, AuditRow, "audit")

if timeline is None:
    st.warning(
        "Engine detail: the workflow history cannot be read now (Temporal does not answer). "
        "The story and the audit records above are complete; reload later for the engine's "
        "steps.",
        icon=":material/cloud_off:",
    )
else:
    with st.expander(
        f"Engine detail: workflow history ({history_story.plural(len(timeline), 'step')})",
        icon=":material/account_tree:",
    ):
        st.caption(
            "Every run of the account's Temporal workflow: requests, effects, timers and state "
            "changes, without payloads."
        )
        if timeline:
            records_table(
                [
                    {
                        "time (UTC)": ui.when(row.time),
                        "run": row.run,
                        "step": row.step,
                        "details": row.details,
                    }
                    for row in timeline
                ],
                numbered="run",
            )
        else:
            st.caption("No workflow yet: 2FA was never enabled for this account.")
        downloads("timeline", timeline, TimelineRow, "timeline")
