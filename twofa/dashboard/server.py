"""What ``streamlit run`` serves: the dashboard (app.py) plus its one route, the session cookie.

``streamlit run server.py`` finds ``app`` and runs it under uvicorn. Two things happen here
rather than in the page script:

- the cookie route (session_cookie.py), since only an HTTP answer can set an HttpOnly cookie;
- the service layer's imports (SQLAlchemy, Temporal, pandas, Altair: ~3 s on a small machine)
  start at server start, in a thread, so the first visitor does not wait for them.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from twofa.dashboard import session_cookie

#: What the first script run would otherwise import while a visitor waits.
PRELOAD = ("twofa.dashboard.ui", "twofa.dashboard.history_story", "pandas", "altair")


def preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)


@asynccontextmanager
async def _lifespan(_app: Any) -> AsyncIterator[None]:
    threading.Thread(target=preload, name="twofa-dashboard-preload", daemon=True).start()
    yield


app = st.App(Path(__file__).with_name("app.py"), routes=session_cookie.routes, lifespan=_lifespan)
