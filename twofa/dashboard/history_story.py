"""An account's audit trail told in the product document's words, one line per audit record.

Auditors read "Wrong PIN: 4 attempts left" and 'Browser "Carol laptop" enrolled', not event
names and JSON; each line keeps its record's sequence number, so it can be checked against the
raw trail (and ``twofa audit verify``). Unknown events still get a line, never a gap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twofa.views import AuditRow
from twofa.vocabulary import Step
from twofa.vocabulary import TwoFactorState as S
from twofa.workflows.messages import CodeVerdict

STEP_NAMES: dict[str, str] = {
    Step.CODE: "the activation code",
    Step.ACTIVATION: "activation (PIN, seal, browser)",
    Step.PIN: "the PIN",
    Step.ENROLL: "enrolling this browser",
    Step.ENROLL_CODE: "the emailed code for a new browser",
    Step.ENROLL_PIN: "the PIN for a new browser",
}


#: S10's notification mails, by kind.
NOTICES = {
    "browser_enrolled": "a browser was enrolled",
    "two_factor_disabled": "2FA was disabled",
    "two_factor_locked": "2FA was locked",
}


@dataclass(frozen=True)
class StoryLine:
    seq: int
    time: datetime
    what: str
    by: str


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def moment(value: Any) -> str:
    """An ISO time from a record's details, said like the rest of the dashboard (UTC)."""
    if not value:
        return ""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def browser(details: dict[str, Any]) -> str:
    name = details.get("name")
    return f"Browser “{name}”" if name else "An unnamed browser"


def actor(who: str) -> str:
    """Who did it: the user, an admin by email, the engine itself."""
    if who == "user":
        return "the user"
    if who in ("system", ""):
        return "the system"
    role, _, email = who.partition(":")
    return f"{role} {email}" if email else who


def _attempts(d: dict[str, Any]) -> str:
    left = d.get("attempts_left")
    return "" if left is None else f", {plural(int(left), 'attempt')} left"


def _notice(d: dict[str, Any]) -> str:
    return NOTICES.get(str(d.get("kind")), "")


def _state_changed(d: dict[str, Any], by: str) -> str:
    before, after = d.get("before"), d.get("after")
    if after == S.DISABLED:
        return "2FA disabled" + (f" by {by}" if by.startswith("admin") else "")
    changes: dict[tuple[str, str], str] = {
        (S.DISABLED, S.PENDING_CODE): "2FA enabled; the user is logged out to enter the code",
        (S.PENDING_CODE, S.PENDING_ACTIVATION): "Activation code accepted",
        (S.PENDING_ACTIVATION, S.ACTIVE): "2FA activated",
    }
    return changes.get((str(before), str(after)), f"2FA state: {before} → {after}")


def _code_rejected(d: dict[str, Any], by: str) -> str:
    verdict = d.get("verdict")
    if verdict == CodeVerdict.EXPIRED:
        return "Activation code refused: expired"
    if verdict == CodeVerdict.LOCKED:
        return "Activation code refused: too many wrong codes; a new login sends a new one"
    return "Activation code rejected" + _attempts(d)


def _pin_rejected(d: dict[str, Any], by: str) -> str:
    if d.get("locked"):
        return "Wrong PIN: 2FA locked"
    return "Wrong PIN" + _attempts(d)


def _locked(d: dict[str, Any], by: str) -> str:
    until = moment(d.get("locked_until"))
    return f"2FA locked until {until}" if until else "2FA locked until an admin unlocks it"


def _unlocked(d: dict[str, Any], by: str) -> str:
    return f"2FA unlocked by {by}" if by.startswith("admin") else "2FA unlocked: the lock ran out"


def _device_removed(d: dict[str, Any], by: str) -> str:
    reason = d.get("reason")
    if reason == "disable":
        return f"{browser(d)} revoked as 2FA was disabled"
    if reason == "admin":
        return f"{browser(d)} revoked by {by}"
    return f"{browser(d)} deleted by the user"


def _login_failed(d: dict[str, Any], by: str) -> str:
    text = "Wrong password"
    if d.get("failures_in_a_row"):
        text += f" ({int(d['failures_in_a_row'])} in a row)"
    if d.get("blocked_seconds"):
        text += f"; logins blocked {plural(int(d['blocked_seconds']), 'second')}"
    return text


def _login_refused(d: dict[str, Any], by: str) -> str:
    if d.get("reason") == "locked":
        return "Login refused: 2FA is locked"
    if d.get("reason") == "blocked":
        return "Login refused: too many wrong passwords, wait"
    return "Login refused"


def _step(name: Any) -> str:
    return STEP_NAMES.get(str(name), str(name).replace("_", " "))


SENTENCES: dict[str, Callable[[dict[str, Any], str], str]] = {
    "account_registered": lambda d, by: "Account registered",
    "two_factor_state_changed": _state_changed,
    "two_factor_locked": _locked,
    "two_factor_unlocked": _unlocked,
    "code_issued": lambda d, by: (
        f"Activation code #{d.get('number', '?')} emailed, "
        f"valid until {moment(d.get('expires_at'))}"
    ),
    "code_rejected": _code_rejected,
    "pin_rejected": _pin_rejected,
    "device_enrolled": lambda d, by: (
        f"{browser(d)} enrolled" + (" at activation" if d.get("at_activation") else "")
    ),
    "device_removed": _device_removed,
    "email_changed": lambda d, by: "Email address changed at activation",
    "login_password_accepted": lambda d, by: (
        f"Password accepted; next: {_step(d.get('next_step'))}"
    ),
    "login_step_passed": lambda d, by: (
        f"Login passed {_step(d.get('passed'))}; next: {_step(d.get('next_step'))}"
    ),
    "login_succeeded": lambda d, by: (
        "Logged in with the PIN" if d.get("second_factor") else "Logged in with the password"
    ),
    "login_failed": _login_failed,
    "login_refused": _login_refused,
    "logged_out": lambda d, by: "Logged out",
    "sessions_ended": lambda d, by: (
        f"Auto-logout ended {plural(int(d.get('count', 0)), 'session')}"
        if d.get("reason") == "auto_logout"
        else f"{plural(int(d.get('count', 0)), 'session')} ended"
    ),
    "mail_failed": lambda d, by: (
        f"Activation mail {d.get('number', '')} could not be sent: {d.get('reason', 'refused')}"
    ),
    "notification_sent": lambda d, by: f"Told the user by mail: {_notice(d)}",
    "notification_failed": lambda d, by: (
        f"Could not tell the user by mail ({_notice(d)}): {d.get('reason', 'refused')}"
    ),
    "session_kept": lambda d, by: "The session that asked to disable 2FA is kept open",
    "session_cut_cleared": lambda d, by: (
        "Cleared the auto-logout of an enable whose workflow was stopped before 2FA was on"
    ),
}


def details_of(row: AuditRow) -> dict[str, Any]:
    try:
        values = json.loads(row.details)
    except ValueError:
        return {}
    return values if isinstance(values, dict) else {}


def line(row: AuditRow) -> StoryLine:
    details, by = details_of(row), actor(row.actor)
    sentence = SENTENCES.get(row.event)
    if sentence is None:
        what = row.event.replace("_", " ").capitalize()
        shown = {k: v for k, v in details.items() if k not in ("email",)}
        if shown:
            what += " (" + ", ".join(f"{k}: {v}" for k, v in shown.items()) + ")"
    else:
        what = sentence(details, by)
    return StoryLine(seq=row.seq, time=row.time, what=what, by=by)


def story(trail: list[AuditRow]) -> list[StoryLine]:
    return [line(row) for row in trail]
