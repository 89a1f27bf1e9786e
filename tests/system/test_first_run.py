"""The first run as a person sees it: `twofa up` (what `make run` runs) starts and stops quietly.

A clean start says where each part listens and when everything answers; a clean stop (Ctrl-C)
exits 0 and prints no warning, traceback or error: those would send a person hunting for a
failure that did not happen.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import REPO, free_port

#: Independent of the database backend: run once, in the SQLite pass of `make test`.
pytestmark = pytest.mark.single_backend

NOISE = re.compile(r"WARN|Traceback|Error|ERROR|CRITICAL|FATAL")


def read_until(process: subprocess.Popen[bytes], marker: str, seconds: float) -> list[str]:
    """Every output line until one contains ``marker`` (or the process ends, or time runs out)."""
    assert process.stdout is not None
    lines: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    buffered = b""
    while time.monotonic() < deadline:
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
            break
        buffered += chunk
        *complete, buffered = buffered.split(b"\n")
        lines += [line.decode("utf-8", "replace") for line in complete]
        if any(marker in line for line in lines):
            break
    selector.close()
    return lines


def make(env: dict[str, str], *args: str, stdin: str = "") -> str:
    """A README helper target, run as a second shell would, with the same TWOFA_* variables."""
    done = subprocess.run(
        ["make", "-s", *args], cwd=REPO, env=env, input=stdin.encode(), capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def second_shell(env: dict[str, str]) -> None:
    """The README's helpers work against a stack on non-default ports: an end user for the
    pages, a dashboard operator, demo accounts."""
    created = json.loads(make(env, "user", "EMAIL=ann@example.com", "PASSWORD=correct horse"))
    assert created["email"] == "ann@example.com" and created["two_factor"] == "disabled"
    again = subprocess.run(
        ["make", "-s", "user", "EMAIL=Ann@example.com", "PASSWORD=it's another"],
        cwd=REPO, env=env, capture_output=True,
    )  # fmt: skip
    assert again.returncode != 0 and b"refused: " in again.stderr, again
    out = make(env, "admin", "EMAIL=alice@example.com", stdin="operator password\n")
    assert "admin alice@example.com created" in out
    out = make(env, "seed", "N=3")
    assert "every seeded account's password is 'demo password'" in out


def test_up_starts_and_stops_on_ctrl_c_quietly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("API", "TEMPORAL", "TEMPORAL_UI", "SMTP", "DASHBOARD")}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TWOFA_")},
        "TWOFA_DATA_DIR": str(tmp_path / "data"),  # a fresh data dir, as on a first run
        **{f"TWOFA_{name}_PORT": str(port) for name, port in ports.items()},
    }
    twofa = Path(sys.executable).parent / "twofa"
    process = subprocess.Popen(
        [twofa, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        started = read_until(process, "ready:", 120)
        assert any("ready:" in line for line in started), "\n".join(started)
        assert any(f"http://127.0.0.1:{ports['API']}/" in line for line in started)
        assert not any("alembic" in line for line in started), "\n".join(started)
        second_shell(env)
        process.send_signal(signal.SIGINT)  # Ctrl-C reaches `twofa up`; it stops the rest
        stopped = read_until(process, "Cockpit 2FA stopped.", 60)
        assert process.wait(timeout=30) == 0, "\n".join(started + stopped)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    printed = started + stopped
    assert stopped[-1] == "Cockpit 2FA stopped.", "\n".join(stopped)
    noisy = [line for line in printed if NOISE.search(line)]
    assert noisy == [], "\n".join(noisy)
    farewell = [line for line in stopped if "stopping every part" in line or "stopped." in line]
    after_signal = stopped[stopped.index(farewell[0]) :]
    assert after_signal == farewell, "\n".join(stopped)  # it stops, and it stopped: nothing else
