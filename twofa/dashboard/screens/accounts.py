"""Accounts: search by email prefix, filter by state, sort, page through 50 at a time.

Filtering, sorting and paging happen in the database (AdminService.accounts), so the page stays
quick with a million accounts; the dashboard only ever holds the page it shows.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from twofa.dashboard import ui
from twofa.views import AccountPage, AccountRow
from twofa.vocabulary import TwoFactorState

PAGE_SIZE = 50
SORTS = {
    "email": "Email",
    "created_at": "Created",
    "updated_at": "Last change",
    "state": "2FA state",
}
ORDERS = ("Ascending", "Descending")
ALL = "all"

ui.require_operator()
st.title("Accounts")

search_col, state_col, sort_col, order_col = st.columns([3, 2, 2, 2])
search = search_col.text_input(
    "Email starts with", key="accounts_search", placeholder="e.g. alice or alice@example"
)
state_choice = state_col.selectbox(
    "2FA state",
    [ALL, *ui.STATE_LABELS],
    format_func=lambda s: "All states" if s == ALL else ui.state_label(s),
    key="accounts_state",
)
state = None if state_choice == ALL else state_choice
sort = sort_col.selectbox(
    "Sort by", list(SORTS), format_func=SORTS.__getitem__, key="accounts_sort"
)
order = order_col.radio("Order", ORDERS, horizontal=True, key="accounts_order")

filters = (search, state, sort, order)
if st.session_state.get("accounts_filters") != filters:  # a new question starts at page 1
    st.session_state["accounts_filters"] = filters
    st.session_state["accounts_page"] = 1
page_number = int(st.session_state.get("accounts_page", 1))


def fetch(number: int) -> AccountPage:
    return ui.call(
        lambda a: a.accounts(
            search=search,
            state=state,
            sort=sort,  # type: ignore[arg-type]
            descending=order == "Descending",
            page=number,
            page_size=PAGE_SIZE,
        )
    )


result = fetch(page_number)  # past the last page (the data shrank) it answers the last one
page_number = result.page
pages = result.pages
st.session_state["accounts_page"] = page_number

first = (page_number - 1) * PAGE_SIZE + 1
last = first + len(result.rows) - 1
if not result.total_is_exact:
    matches = f"More than {result.total:,} accounts match"
elif result.total == 1:
    matches = "1 account matches"
else:
    matches = f"{result.total:,} accounts match"
reach = (
    f" · pages reach the first {pages * PAGE_SIZE:,}: search or reverse the order for more"
    if result.total > pages * PAGE_SIZE or not result.total_is_exact
    else ""
)
st.caption(
    f"{matches} · showing {first:,} to {last:,} · page {page_number} of {pages}{reach}"
    " · times in UTC"
    if result.rows
    else "No account matches."
)


def frame(rows: list[AccountRow]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "email": row.email,
                "2FA state": ui.state_label(row.state),
                "locked until": ui.when(row.locked_until, "")
                if row.state == TwoFactorState.LOCKED
                else "",
                "created": ui.when(row.created_at),
                "last change": ui.when(row.updated_at),
            }
            for row in rows
        ],
        columns=["email", "2FA state", "locked until", "created", "last change"],
    )


if result.rows:
    table = st.dataframe(
        frame(result.rows),
        hide_index=True,
        width="stretch",
        height=min(38 + 35 * len(result.rows), 38 + 35 * 20),  # up to 20 rows, then scroll
        on_select="rerun",
        selection_mode="single-row",
        key="accounts_table",
    )
    selected = table.selection.rows if table is not None else []
    if selected:
        ui.open_account(result.rows[selected[0]].id)

    pick_col, open_col = st.columns([4, 1], vertical_alignment="bottom")
    choice = pick_col.selectbox(
        "Account on this page",
        result.rows,
        format_func=lambda row: f"{row.email} — {ui.state_label(row.state)}",
        key="accounts_choice",
    )
    if open_col.button("Open account", type="primary", key="accounts_open") and choice:
        ui.open_account(choice.id)


def move(step: int) -> None:
    st.session_state["accounts_page"] = min(max(page_number + step, 1), pages)


prev_col, number_col, next_col = st.columns([1, 2, 1], vertical_alignment="bottom")
prev_col.button(
    "◀ Previous", key="accounts_prev", disabled=page_number <= 1, on_click=move, args=(-1,)
)
number_col.number_input("Page", min_value=1, max_value=pages, step=1, key="accounts_page")
next_col.button(
    "Next ▶", key="accounts_next", disabled=page_number >= pages, on_click=move, args=(1,)
)
