"""Entry point of ``streamlit run``: the sign-in gate, then the pages an operator may open.

A visitor without a live operator session gets one page, the sign-in form, and no navigation;
the pages themselves check the session again, so none of them can be reached around the gate.
"""

from __future__ import annotations

import logging

import streamlit as st

from twofa.dashboard import ui

st.set_page_config(
    page_title="Cockpit 2FA dashboard", page_icon=":material/shield_lock:", layout="wide"
)

try:
    operator = ui.signed_in_operator()
except Exception as error:  # the store or Temporal is down: say so instead of a traceback
    logging.getLogger("twofa.dashboard").exception("the service layer does not answer")
    st.error(
        f"The dashboard cannot reach its database or Temporal server ({type(error).__name__}; "
        "details in the dashboard's log). Check that `twofa up` (or the servers it would start) "
        "is running, then reload this page.",
        icon=":material/cloud_off:",
    )
    st.stop()
ui.sync_cookie()
if operator is None:
    page = st.navigation(
        [
            st.Page(
                ui.SCREENS / "sign_in.py", title="Sign in", icon=":material/login:", default=True
            )
        ],
        position="hidden",
    )
else:
    ui.keep_widget_values()
    page = st.navigation(
        {
            "Watch": [
                st.Page(
                    ui.SCREENS / "overview.py",
                    title="Overview",
                    icon=":material/monitoring:",
                    default=True,
                ),
                st.Page(ui.SCREENS / "accounts.py", title="Accounts", icon=":material/group:"),
            ],
            "One account": [
                st.Page(ui.SCREENS / "account.py", title="Account", icon=":material/person:"),
                st.Page(ui.SCREENS / "history.py", title="History", icon=":material/history:"),
            ],
        }
    )
    with st.sidebar:
        st.markdown(f"**{ui.md(operator.email)}**")
        if operator.can_act:
            st.caption("Admin: can revoke browsers, unlock and disable 2FA.")
        else:
            st.caption("Auditor: read-only.")
        st.button("Sign out", key="sign_out", on_click=ui.sign_out, icon=":material/logout:")
page.run()
