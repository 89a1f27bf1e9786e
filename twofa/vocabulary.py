"""The product's words, each listed once: 2FA states, login steps and outcomes, operator roles.

The store holds these values (a CHECK constraint on each column, migration 0012), the API answers
with them, and the pages and the dashboard word them: a misspelt one is a type error rather than
a branch that silently never runs. ``TwoFactorState`` is the workflow's own (workflows/messages.py).
"""

from __future__ import annotations

from enum import StrEnum

from twofa.workflows.messages import TwoFactorState

__all__ = ["STORED_STATES", "Outcome", "Role", "Step", "TwoFactorState"]

#: The states an account's row holds: ``NEW`` lives only in a workflow, before its first step.
STORED_STATES = tuple(s for s in TwoFactorState if s is not TwoFactorState.NEW)


class Outcome(StrEnum):
    """What a login step answers (``LoginView.outcome``, the contract's outcome table)."""

    AUTHENTICATED = "authenticated"
    ACTIVATION_CODE_REQUIRED = "activation_code_required"
    ACTIVATION_REQUIRED = "activation_required"
    PIN_REQUIRED = "pin_required"
    BROWSER_NOT_TRUSTED = "browser_not_trusted"
    LOCKED = "locked"


class Step(StrEnum):
    """What a login in progress waits for (``login_challenges.step``, ``wrong_step``'s
    ``expected``); a new browser's enrollment has its own code and PIN steps."""

    CODE = "code"
    ACTIVATION = "activation"
    PIN = "pin"
    ENROLL = "enroll"
    ENROLL_CODE = "enroll_code"
    ENROLL_PIN = "enroll_pin"

    @property
    def outcome(self) -> Outcome:
        """The outcome that asks for this step."""
        return _OUTCOMES[self]

    @property
    def form(self) -> Step:
        """The step whose form asks for it: a new browser's code and PIN are typed like any."""
        return _FORMS.get(self, self)


_OUTCOMES = {
    Step.CODE: Outcome.ACTIVATION_CODE_REQUIRED,
    Step.ENROLL_CODE: Outcome.ACTIVATION_CODE_REQUIRED,
    Step.ACTIVATION: Outcome.ACTIVATION_REQUIRED,
    Step.PIN: Outcome.PIN_REQUIRED,
    Step.ENROLL_PIN: Outcome.PIN_REQUIRED,
    Step.ENROLL: Outcome.BROWSER_NOT_TRUSTED,
}
_FORMS = {Step.ENROLL_CODE: Step.CODE, Step.ENROLL_PIN: Step.PIN}


class Role(StrEnum):
    """A dashboard operator's role (``operators.role``): auditors read, admins also act."""

    ADMIN = "admin"
    AUDITOR = "auditor"
