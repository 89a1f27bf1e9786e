"""One account: its 2FA state and timers, trusted browsers, open sessions, and admin actions.

Each action (revoke one browser, unlock, disable 2FA) waits for a confirmation dialog, then goes
through AdminService with the signed-in operator, so it reaches the workflow and the audit trail
with the admin as actor. Auditors get no buttons; the service refuses them anyway (403).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from twofa.dashboard import ui
from twofa.errors import ServiceError
from twofa.views import AccountDetail, DeviceView
from twofa.vocabulary import TwoFactorState

operator = ui.require_operator()
st.title("Account")
detail = ui.load_account(
    "account_pick", "account.py", lambda account_id: ui.call(lambda a: a.account(account_id))
)
account_id = detail.account.id


def device_name(device: DeviceView) -> str:
    return device.name or "unnamed browser"


# -- confirmation dialogs: the pending action lives in the session, so a rerun keeps it open


def ask(kind: str, **details: Any) -> None:
    st.session_state[ui.PENDING_KEY] = {"kind": kind, "account_id": account_id, **details}


def forget() -> None:
    st.session_state.pop(ui.PENDING_KEY, None)


def confirm_buttons(label: str, action: Any, done: Any) -> None:
    """Confirm runs ``action`` (given the operator, freshly checked) and reports ``done``."""
    confirm_col, cancel_col = st.columns(2)
    if confirm_col.button(label, type="primary", key="confirm_action", width="stretch"):
        current = ui.require_operator()
        try:
            result = ui.call(lambda a: action(a, current))
        except ServiceError as error:
            st.error(ui.describe(error), icon=":material/error:")
        except Exception as error:  # say it in the dialog; the trace goes to the log
            logging.getLogger("twofa.dashboard").exception("admin action failed")
            st.error(
                f"The action failed ({type(error).__name__}); the dashboard's log has details. "
                "Check the account before trying again.",
                icon=":material/error:",
            )
        else:
            forget()
            ui.flash("success", done(result))
            st.rerun()
    if cancel_col.button("Cancel", key="cancel_action", width="stretch"):
        forget()
        st.rerun()


@st.dialog("Revoke this trusted browser?", on_dismiss=forget)
def revoke_dialog(pending: dict[str, Any]) -> None:
    name = pending.get("name") or "unnamed browser"
    st.markdown(
        f"**{ui.md(name)}** of **{ui.md(detail.account.email)}** will no longer connect. Its "
        "user must enroll it again (emailed code, then PIN). The account's other browsers keep "
        "working."
    )
    confirm_buttons(
        "Revoke browser",
        lambda a, op: a.revoke_device(op, pending["account_id"], pending["device_id"]),
        lambda _: f"Browser “{ui.md(name)}” revoked: it can no longer connect.",
    )


@st.dialog("Unlock two-factor authentication?", on_dismiss=forget)
def unlock_dialog(pending: dict[str, Any]) -> None:
    st.markdown(
        f"**{ui.md(detail.account.email)}** will be able to try PINs again at once; the count of "
        "wrong PINs starts over."
    )
    confirm_buttons(
        "Unlock",
        lambda a, op: a.unlock(op, pending["account_id"]),
        lambda _: "Unlocked: the account can log in with its PIN again.",
    )


@st.dialog("Disable two-factor authentication?", on_dismiss=forget)
def disable_dialog(pending: dict[str, Any]) -> None:
    st.markdown(
        f"2FA goes off for **{ui.md(detail.account.email)}** and **every** trusted browser "
        f"({len(detail.devices)}) is revoked at once. The user can enable it again later."
    )
    confirm_buttons(
        "Disable 2FA",
        lambda a, op: a.disable(op, pending["account_id"]),
        lambda result: f"2FA disabled; {result.revoked_devices} trusted browser(s) revoked.",
    )


DIALOGS = {"revoke": revoke_dialog, "unlock": unlock_dialog, "disable": disable_dialog}


# -- the page


def timer(cell: Any, label: str, moment: datetime | None, help: str) -> None:
    """How soon first (what matters at 3 a.m.), the exact UTC time under it."""
    cell.metric(label, ui.relative(moment) or "—", help=help)
    if moment is not None:
        cell.caption(f"{ui.when(moment)} UTC")


def ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def pin_counter(cell: Any, detail: AccountDetail) -> None:
    """What the PIN counters mean now: a lock resets the wrong-PIN count, so say why it holds."""
    policy = ui.policy()
    locks = detail.pin_locks_in_a_row
    if detail.account.state == TwoFactorState.LOCKED:
        cell.metric(
            "Locked by wrong PINs",
            policy.max_pin_failures,
            help="Five wrong PINs in a row lock 2FA; the count starts over at the lock.",
        )
        held = (
            "held until an admin unlocks it"
            if detail.account.locked_until is None
            else f"the {ordinal(policy.locks_before_admin_unlock)} in a row needs an admin"
        )
        cell.caption(f"{ordinal(max(locks, 1))} lock in a row; {held}")
        return
    cell.metric(
        "Wrong PINs in a row",
        f"{detail.pin_failures} of {policy.max_pin_failures}",
        help="The last one locks 2FA for a while; a right PIN starts the count over.",
    )
    if locks:
        cell.caption(f"{locks} lock{'s' if locks != 1 else ''} in a row before this")


def timers(detail: AccountDetail) -> None:
    row = detail.account
    cells = st.columns(5)
    cells[0].metric("2FA state", ui.state_label(row.state))
    timer(
        cells[1],
        "Auto-logout",
        detail.auto_logout_at,
        "Every session ends this long after enabling.",
    )
    timer(cells[2], "Code expires", detail.code_expires_at, "The emailed activation code's end.")
    if row.state == TwoFactorState.LOCKED and row.locked_until is None:
        cells[3].metric("Unlocks", "by admin", help="The third lock in a row holds.")
    else:
        timer(cells[3], "Unlocks", row.locked_until, "Too many wrong PINs lock 2FA a while.")
    pin_counter(cells[4], detail)


def devices(detail: AccountDetail, can_act: bool) -> None:
    st.subheader(f"Trusted browsers ({len(detail.devices)})")
    if not detail.devices:
        st.caption("No trusted browser.")
        return
    header = st.columns([3, 2, 2, 1.3])
    for cell, title in zip(header, ("Name", "Enrolled", "Last used", ""), strict=True):
        cell.caption(title)
    for device in detail.devices:
        with st.container(border=True):
            cells = st.columns([3, 2, 2, 1.3], vertical_alignment="center")
            cells[0].markdown(f"**{ui.md(device_name(device))}**  \n`{device.id}`")
            cells[1].write(ui.when(device.enrolled_at))
            cells[2].write(
                f"{ui.when(device.last_used_at, 'never')}  \n{ui.relative(device.last_used_at)}"
            )
            if can_act:
                cells[3].button(
                    "Revoke",
                    key=f"revoke_{device.id}",
                    icon=":material/delete:",
                    on_click=ask,
                    args=("revoke",),
                    kwargs={"device_id": device.id, "name": device_name(device)},
                )


def sessions(detail: AccountDetail) -> None:
    st.subheader(f"Open sessions ({len(detail.sessions)})")
    if not detail.sessions:
        st.caption("No open session.")
        return
    names = {d.id: device_name(d) for d in detail.devices}
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "session": s.id,
                    "browser": names.get(s.device_id or "", "—" if not s.device_id else "revoked"),
                    "opened (UTC)": ui.when(s.created_at),
                    "expires (UTC)": ui.when(s.expires_at),
                    "expires": ui.relative(s.expires_at),
                }
                for s in detail.sessions
            ]
        ),
        hide_index=True,
        width="stretch",
        height="content",  # every open session, no inner scroll box
    )


def actions(detail: AccountDetail) -> None:
    st.subheader("Admin actions")
    state = detail.account.state
    unlock_col, disable_col, _ = st.columns([1, 1, 3])
    unlock_col.button(
        "Unlock",
        key="unlock",
        icon=":material/lock_open:",
        disabled=state != TwoFactorState.LOCKED,
        help="Only a locked account can be unlocked.",
        on_click=ask,
        args=("unlock",),
        width="stretch",
    )
    disable_col.button(
        "Disable 2FA",
        key="disable",
        icon=":material/block:",
        disabled=state == TwoFactorState.DISABLED,
        help="Turns 2FA off and revokes every trusted browser.",
        on_click=ask,
        args=("disable",),
        width="stretch",
    )


row = detail.account
ui.show_flash()
st.subheader(ui.md(row.email), anchor=False)
st.caption(
    f"id `{row.id}` · created {ui.when(row.created_at)} · last change {ui.when(row.updated_at)}"
    " · times in UTC"
)
timers(detail)
devices(detail, operator.can_act)
sessions(detail)
if operator.can_act:
    actions(detail)
else:
    st.info("Auditors read everything here but change nothing.", icon=":material/visibility:")
st.page_link(
    ui.SCREENS / "history.py",
    label="Workflow history and audit trail",
    icon=":material/history:",
    query_params={"id": row.id},
)

pending = st.session_state.get(ui.PENDING_KEY)
if pending and pending.get("account_id") == row.id and pending.get("kind") in DIALOGS:
    DIALOGS[pending["kind"]](pending)
