"""Debian's chromium for real-browser tests, through Playwright (never `playwright install`)."""

from __future__ import annotations

from typing import Any

CHROMIUM = "/usr/bin/chromium"
#: As root in a closed network: no sandbox, and none of Chromium's own background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def launch(playwright: Any) -> Any:
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
