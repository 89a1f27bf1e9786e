"""The only page a visitor who is not signed in sees; sign-ins are throttled like users' (S2)."""

from __future__ import annotations

import streamlit as st

from twofa.dashboard import ui
from twofa.errors import ServiceError

st.title("Cockpit 2FA dashboard")  # a :material: icon here is fetched from a font server
st.caption("For admins and auditors. Operators are created with `twofa admin create`.")
notice = st.session_state.get(ui.NOTICE_KEY)
if notice:
    st.info(notice)

with st.form("sign_in"):
    email = st.text_input("Email", key="sign_in_email", autocomplete="username")
    password = st.text_input(
        "Password", type="password", key="sign_in_password", autocomplete="current-password"
    )
    submitted = st.form_submit_button("Sign in", type="primary", on_click=ui.clear_notice)

if submitted:
    try:
        token, _ = ui.call(lambda a: a.sign_in(email, password))
    except ServiceError as error:
        st.error(ui.describe(error), icon=":material/error:")
    else:
        ui.signed_in(token)
        st.rerun()
