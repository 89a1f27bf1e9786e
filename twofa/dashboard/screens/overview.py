"""Overview: how many accounts are in each 2FA state, how enrollment flows, what happened per day,
and who is locked out right now. It refreshes itself every 10 seconds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import altair as alt
import pandas as pd
import streamlit as st

from twofa.admin import FUNNEL
from twofa.dashboard import ui
from twofa.views import OverviewView
from twofa.vocabulary import STORED_STATES

DAYS = 30
STATE_ORDER = list(STORED_STATES)
STATE_COLORS = ["#9e9e9e", "#f2a93b", "#5b8def", "#2e9d5b", "#d64545"]
DAILY_LABELS = {
    "device_enrolled": "browsers enrolled (activations)",
    "pin_rejected": "wrong PINs",
    "two_factor_locked": "locks",
}
DAILY_COLORS = ["#2e9d5b", "#f2a93b", "#d64545"]

ui.require_operator()
st.title("Overview")


def state_tiles(view: OverviewView) -> None:
    total = sum(view.states.values())
    tiles = st.columns(len(STATE_ORDER) + 1)
    tiles[0].metric("Accounts", f"{total:,}")
    for tile, state in zip(tiles[1:], STATE_ORDER, strict=True):
        tile.metric(ui.state_label(state), f"{view.states.get(state, 0):,}")


def state_chart(view: OverviewView) -> alt.Chart:
    labels = [ui.state_label(s) for s in STATE_ORDER]
    data = pd.DataFrame({"state": labels, "accounts": [view.states.get(s, 0) for s in STATE_ORDER]})
    return (
        alt.Chart(data, height=260)
        .mark_bar()
        .encode(
            x=alt.X(
                "state:N",
                sort=labels,
                title=None,
                axis=alt.Axis(labelAngle=0, labelExpr="split(datum.label, ' ')"),
            ),
            y=alt.Y("accounts:Q", title="accounts"),
            color=alt.Color(
                "state:N", scale=alt.Scale(domain=labels, range=STATE_COLORS), legend=None
            ),
            tooltip=["state", "accounts"],
        )
    )


def funnel_chart(view: OverviewView) -> alt.Chart:
    steps = list(FUNNEL)
    first = max(view.funnel.get(steps[0], 0), 1)
    data = pd.DataFrame(
        {
            "step": steps,
            "accounts": [view.funnel.get(s, 0) for s in steps],
        }
    )
    data["share"] = (data["accounts"] / first * 100).round().astype(int).astype(str) + " %"
    bars = (
        alt.Chart(data, height=180)
        .mark_bar(color="#5b8def")
        .encode(
            y=alt.Y("step:N", sort=steps, title=None),
            x=alt.X("accounts:Q", title="accounts that reached the step"),
            tooltip=["step", "accounts", "share"],
        )
    )
    labels = bars.mark_text(align="left", dx=4).encode(text="share:N")
    return bars + labels


def daily_frame(view: OverviewView, today: date) -> pd.DataFrame:
    """One row per day and event, zeros included, so a quiet day shows as a dip, not a gap."""
    days = [today - timedelta(days=n) for n in range(DAYS, -1, -1)]
    counts = {(d.day, d.event): d.count for d in view.per_day}
    rows = [
        {"day": day, "event": label, "count": counts.get((day.isoformat(), event), 0)}
        for day in days
        for event, label in DAILY_LABELS.items()
    ]
    return pd.DataFrame(rows)


def daily_chart(frame: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("day:T", title=None),
            y=alt.Y("count:Q", title="per day"),
            color=alt.Color(
                "event:N",
                title=None,
                scale=alt.Scale(domain=list(DAILY_LABELS.values()), range=DAILY_COLORS),
                legend=alt.Legend(orient="bottom", labelLimit=0),
            ),
            tooltip=[alt.Tooltip("day:T"), "event", "count"],
        )
    )


def locked_table(view: OverviewView) -> None:
    if not view.locked_now:
        st.success("No account is locked right now.", icon=":material/check_circle:")
        return
    frame = pd.DataFrame(
        [
            {
                "email": row.email,
                "locked until (UTC)": ui.when(row.locked_until, "until an admin unlocks"),
                "unlocks": ui.relative(row.locked_until) or "needs an admin",
            }
            for row in view.locked_now
        ]
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        height=min(38 + 35 * len(frame), 38 + 35 * 20),  # up to 20 rows, then scroll
    )
    choice = st.selectbox(
        "Locked account",
        view.locked_now,
        format_func=lambda row: row.email,
        key="overview_locked_choice",
    )
    if st.button("Open locked account", key="overview_open_locked") and choice is not None:
        ui.open_account(choice.id)


@st.fragment(run_every="10s")
def live() -> None:
    """Re-checks the session and re-reads the overview on every refresh."""
    ui.require_operator()
    view = ui.call(lambda a: a.overview(days=DAYS))
    now = datetime.now(UTC)
    st.caption(f"Updated {ui.when(now)} UTC · refreshes every 10 s")
    state_tiles(view)
    left, right = st.columns(2)
    with left:
        st.subheader("Accounts per 2FA state")
        st.altair_chart(state_chart(view), width="stretch")
    with right:
        st.subheader("Enrollment funnel")
        st.altair_chart(funnel_chart(view), width="stretch")
        st.caption("Accounts that ever reached each step; % of those that enabled 2FA.")
    st.subheader(f"Activations, wrong PINs and locks — last {DAYS} days")
    st.altair_chart(daily_chart(daily_frame(view, now.date())), width="stretch")
    st.subheader(f"Locked right now ({len(view.locked_now)})")
    locked_table(view)


live()
