"""What every dashboard page shares: the signed-in operator, service calls, and time formatting.

Pages never query the store or Temporal themselves: every read and action goes through
``AdminService`` on the runtime's loop, so the dashboard applies the same rules as the API.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import streamlit as st
from pydantic import BaseModel

from twofa.admin import OPERATOR_SESSION_TTL, AdminService
from twofa.dashboard import session_cookie
from twofa.dashboard.runtime import get_runtime
from twofa.errors import ServiceError
from twofa.policy import Policy
from twofa.views import OperatorView
from twofa.vocabulary import STORED_STATES

T = TypeVar("T")

HERE = Path(__file__).parent
SCREENS = HERE / "screens"
TOKEN_KEY = "operator_token"
ACCOUNT_KEY = "account_id"
FLASH_KEY = "flash"
NOTICE_KEY = "sign_in_notice"
PENDING_KEY = "pending_action"
#: What the page's cookie script must do next: keep (with a handoff) or forget the cookie.
COOKIE_ACTION_KEY = "cookie_action"
#: Set once this tab signed out or found its cookie dead: the first request's cookie, which
#: ``st.context.cookies`` keeps offering for the tab's life, is not read again.
COOKIE_SPENT_KEY = "cookie_spent"
#: Widgets whose values outlive a visit to another page (the Accounts page's question).
KEPT_WIDGETS = (
    "accounts_search",
    "accounts_state",
    "accounts_sort",
    "accounts_order",
    "accounts_page",
)
#: The stored state names, said the way people say them ("pending code").
STATE_LABELS: dict[str, str] = {state: state.replace("_", " ") for state in STORED_STATES}

#: How long a dashboard session lasts, as the sign-out notice says it.
SESSION_HOURS = round(OPERATOR_SESSION_TTL.total_seconds() / 3600)


def call(make: Callable[[AdminService], Coroutine[Any, Any, T]]) -> T:
    """Runs one service call on the runtime's loop (``make`` gets the AdminService)."""
    runtime = get_runtime()
    return runtime.run(make(runtime.admin))


def policy() -> Policy:
    """The rules' numbers (wrong PINs before a lock, locks before an admin must unlock)."""
    return get_runtime().admin.users.policy


def describe(error: ServiceError) -> str:
    """An error as an operator reads it: the service's sentence, and when to try again."""
    text = error.message
    if "retry_after" in error.details:
        seconds = int(error.details["retry_after"])
        wait = f"try again in {seconds} second{'s' if seconds != 1 else ''}."
        if text.endswith("try again later."):
            return text.removesuffix("try again later.") + wait
        text += " " + wait.capitalize()
    return text


def _session_token() -> tuple[str | None, bool]:
    """This tab's token, or the cookie's (a reload, a new tab); says which it came from."""
    token = st.session_state.get(TOKEN_KEY)
    if token:
        return token, False
    if st.session_state.get(COOKIE_SPENT_KEY):
        return None, False
    return st.context.cookies.get(session_cookie.COOKIE), True


def signed_in_operator() -> OperatorView | None:
    """The operator of this browser session, or None (a dead token is dropped, with a notice)."""
    token, from_cookie = _session_token()
    if not token:
        return None
    try:
        operator = call(lambda a: a.operator(token))
    except ServiceError as error:
        if error.status != 401:
            raise
        st.session_state.pop(TOKEN_KEY, None)
        st.session_state[COOKIE_SPENT_KEY] = True
        st.session_state[COOKIE_ACTION_KEY] = {"action": "forget"}
        st.session_state[NOTICE_KEY] = "Your dashboard session has ended; sign in again."
        return None
    if from_cookie:
        st.session_state[TOKEN_KEY] = token
    return operator


def require_operator() -> OperatorView:
    """Every page (and every fragment rerun) checks the session: it expires after 8 hours."""
    operator = signed_in_operator()
    if operator is None:
        st.rerun(scope="app")
    assert operator is not None
    return operator


def signed_in(token: str) -> None:
    """After a sign-in: this tab holds the token, and the page is asked to fetch the cookie."""
    st.session_state[TOKEN_KEY] = token
    st.session_state.pop(COOKIE_SPENT_KEY, None)
    st.session_state[COOKIE_ACTION_KEY] = {
        "action": "keep",
        "handoff": session_cookie.handoffs.offer(token),
    }


def sign_out() -> None:
    """The sidebar's button: the browser lets go of its cookie whatever happens, and the
    session ends in the store; if the store cannot be written now, the operator is told that
    the session lapses on its own (no one else holds its token)."""
    token, _ = _session_token()
    st.session_state.pop(TOKEN_KEY, None)
    for key in (ACCOUNT_KEY, FLASH_KEY, PENDING_KEY):
        st.session_state.pop(key, None)
    st.session_state[COOKIE_SPENT_KEY] = True
    st.session_state[COOKIE_ACTION_KEY] = {"action": "forget"}
    st.session_state[NOTICE_KEY] = "Signed out."
    if not token:
        return
    try:
        call(lambda a: a.sign_out(token))
    except Exception:
        logging.getLogger("twofa.dashboard").exception("the session could not be ended")
        st.session_state[NOTICE_KEY] = (
            "Signed out of this browser, but the session could not be ended on the server "
            f"(the dashboard's log says why): it ends by itself within {SESSION_HOURS} hours."
        )


def clear_notice() -> None:
    """The sign-in page's notice stays through every rerun (the cookie script's own among them)
    until the person acts on the form: it is why they see the form, so it must not flash by."""
    st.session_state.pop(NOTICE_KEY, None)


_cookie_script = st.components.v2.component("twofa_session_cookie", js=session_cookie.JS)


def sync_cookie() -> None:
    """Mounts the cookie script while the browser's cookie has to change; gone once done."""
    action = st.session_state.get(COOKIE_ACTION_KEY)
    if not action:
        return
    result = _cookie_script(
        key="session_cookie",
        data={**action, "path": session_cookie.PATH},
        height=0,
        on_done_change=lambda: None,
    )
    if result.done is not None:
        st.session_state.pop(COOKIE_ACTION_KEY, None)


def keep_widget_values() -> None:
    """Streamlit forgets a widget's value on a page where it is not drawn; this keeps them."""
    for key in KEPT_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def flash(kind: str, message: str) -> None:
    """A message that survives the rerun following an action."""
    st.session_state[FLASH_KEY] = (kind, message)


def show_flash() -> None:
    kind, message = st.session_state.pop(FLASH_KEY, (None, None))
    if kind == "success":
        st.success(message, icon=":material/check_circle:")
    elif kind == "error":
        st.error(message, icon=":material/error:")


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+!|~$:])")


def md(text: str) -> str:
    """User-chosen text (device names, emails) shown literally, never as markdown.

    Without this a browser name like ``![x](https://elsewhere/pixel)`` would make every admin
    who opens the account load an outside image, and ``:red[...]`` would restyle the page.
    """
    escaped = _MARKDOWN.sub(r"\\\1", text)
    return "\\" + escaped if escaped.startswith(("-", "=")) else escaped


def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state)


def when(moment: datetime | None, empty: str = "—") -> str:
    """A UTC time to the second; the dashboard shows every time in UTC."""
    if moment is None:
        return empty
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def relative(moment: datetime | None, now: datetime | None = None) -> str:
    """Says "in 4 min" or "12 min ago": at 3 a.m. what matters is how soon, not the clock."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    span = abs(seconds)
    if span < 60:
        amount = f"{span:.0f} s"
    elif span < 3600:
        amount = f"{span / 60:.0f} min"
    elif span < 86400:
        amount = f"{span / 3600:.1f} h"
    else:
        amount = f"{span / 86400:.1f} days"
    return f"in {amount}" if seconds >= 0 else f"{amount} ago"


def open_account(account_id: str, screen: str = "account.py") -> None:
    """Opens an account's page; the id also goes in the URL so a link can be shared."""
    st.session_state[ACCOUNT_KEY] = account_id
    st.switch_page(SCREENS / screen, query_params={"id": account_id})


def current_account_id() -> str | None:
    """The account a page is about: the URL's ``id`` first, else the last one opened."""
    from_url = st.query_params.get("id")
    if from_url:
        st.session_state[ACCOUNT_KEY] = from_url
        return str(from_url)
    remembered = st.session_state.get(ACCOUNT_KEY)
    if remembered:
        st.query_params["id"] = remembered
    return remembered


def account_picker(key: str, screen: str) -> None:
    """For a page opened without an account: find one by email prefix."""
    search = st.text_input("Find an account by email", key=f"{key}_search", placeholder="ali")
    if not search:
        st.info("Search for an account, or open one from the Accounts page.")
        return
    page = call(lambda a: a.accounts(search=search, page_size=20))
    if not page.rows:
        st.warning("No account's email starts with that.")
        return
    choice = st.selectbox(
        "Account",
        page.rows,
        format_func=lambda row: f"{row.email} ({state_label(row.state)})",
        key=f"{key}_choice",
    )
    if st.button("Open", key=f"{key}_open", type="primary") and choice is not None:
        open_account(choice.id, screen)


def load_account(key: str, screen: str, load: Callable[[str], T]) -> T:
    """What a page shows of the account it is about; without one, or when it cannot be loaded,
    the page offers the picker instead and stops there."""
    account_id = current_account_id()
    if not account_id:
        account_picker(key, screen)
        st.stop()
    try:
        return load(account_id)
    except ServiceError as error:
        st.error(describe(error), icon=":material/error:")
        account_picker(key, screen)
        st.stop()


def as_json(rows: Sequence[BaseModel]) -> str:
    """The records as they are, for tools (timestamps ISO 8601 UTC)."""
    return json.dumps([row.model_dump(mode="json") for row in rows], indent=2, ensure_ascii=False)


def as_csv(rows: Sequence[BaseModel], model: type[BaseModel]) -> str:
    """The records for a spreadsheet; an empty list still has its header line."""
    return pd.DataFrame(
        [row.model_dump(mode="json") for row in rows], columns=list(model.model_fields)
    ).to_csv(index=False)
