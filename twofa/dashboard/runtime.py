"""One event loop for the dashboard's service layer, shared by every session and every rerun.

A Temporal client is bound to the event loop it was created on, while Streamlit runs each
script run on a thread of its own. So one daemon thread runs an asyncio loop forever, the
services (``twofa.wiring.services``) are built on that loop, and scripts hand it coroutines and
wait for the answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import streamlit as st

from twofa import errors
from twofa.admin import AdminService
from twofa.config import Settings
from twofa.service import TwoFactorService
from twofa.wiring import services

T = TypeVar("T")


class Runtime:
    """The loop thread and the services living on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="twofa-dashboard-loop", daemon=True
        )
        self._thread.start()
        # A call may wait for a workflow update (its own timeout) and then read the store.
        self.call_timeout = settings.workflow_call_timeout_seconds + 30
        self._open = contextlib.AsyncExitStack()  # entered and closed on the loop thread
        try:
            built = self.run(self._open.enter_async_context(services(settings)), timeout=120)
        except BaseException:
            self._stop_loop()
            raise
        self.users: TwoFactorService = built.users
        self.admin: AdminService = built.admin

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def run(self, call: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs ``call`` on the loop thread and waits; a stuck call becomes a 503, not a hang."""
        future = asyncio.run_coroutine_threadsafe(call, self.loop)
        try:
            return future.result(self.call_timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise errors.UNAVAILABLE() from None

    def close(self) -> None:
        """Releases the database engine and stops the loop thread."""
        if not self.alive:
            return
        with contextlib.suppress(Exception):
            self.run(self._open.aclose(), timeout=10)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


def _settings_key(settings: Settings) -> str:
    """Names the settings without holding their secrets (pepper, service token) as the key."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()


@st.cache_resource(
    show_spinner="Connecting to the database and Temporal…",
    validate=lambda runtime: runtime.alive,
    on_release=lambda runtime: runtime.close(),
)
def _shared(key: str, _settings: Settings) -> Runtime:
    return Runtime(_settings)


def get_runtime() -> Runtime:
    """The runtime for the ``TWOFA_*`` settings read now; other settings get another runtime."""
    settings = Settings()
    return _shared(_settings_key(settings), settings)


def reset() -> None:
    """Closes every runtime, so the next call builds one from the settings of that time."""
    _shared.clear()
