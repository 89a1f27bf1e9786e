"""The project's own processes (`twofa worker`, `twofa api`) started for a test, and killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from twofa.config import Settings

TWOFA = str(Path(sys.executable).parent / "twofa")


#: What a child process shares with the test's system: where its parts are, and its secrets;
#: its timers keep their defaults unless a test hands them over.
SHARED = (
    "data_dir",
    "database_url",
    "temporal_address",
    "temporal_task_queue",
    "smtp_port",
    "service_token",
    "pepper",
    "api_port",
)


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The TWOFA_* variables that make a child process see what ``settings`` describe."""
    return settings.environment(SHARED, **extra)


@contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)
