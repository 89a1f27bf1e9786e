"""Every user operation of Cockpit 2FA, one method each; the API and the web pages map it.

The hot path (login, PIN, session checks) reads the store's projection of each account's 2FA
state and calls the account's workflow only for steps that change that state.
"""

from __future__ import annotations

from twofa.service.account_settings import AccountSettings
from twofa.service.accounts import Accounts
from twofa.service.core import CurrentSession, state_of, utcnow
from twofa.service.login_steps import LoginSteps

__all__ = ["CurrentSession", "TwoFactorService", "state_of", "utcnow"]


class TwoFactorService(Accounts, LoginSteps, AccountSettings):
    """The service as its callers know it (the API, the pages, the CLI, the dashboard): one
    object, made of its parts (accounts, the login steps, settings), which share one core."""
