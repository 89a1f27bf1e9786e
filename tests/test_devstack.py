"""`twofa up` (what `make run` runs): every part starts, answers, and stops with it."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

#: Independent of the database backend: run once, in the SQLite pass of `make test`.
pytestmark = pytest.mark.single_backend


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_starts_everything_and_sigterm_stops_every_child(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("API", "TEMPORAL", "TEMPORAL_UI", "SMTP", "DASHBOARD")}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TWOFA_")},
        "TWOFA_DATA_DIR": str(tmp_path / "data"),
        **{f"TWOFA_{name}_PORT": str(port) for name, port in ports.items()},
    }
    twofa = Path(sys.executable).parent / "twofa"
    output = tmp_path / "up.log"
    with output.open("wb") as log:
        process = subprocess.Popen([twofa, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{ports['API']}/healthz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.5)
        assert r.json() == {"status": "ok", "database": True, "temporal": True}
        dashboard = f"http://127.0.0.1:{ports['DASHBOARD']}"
        while True:  # streamlit's own health endpoint: the dashboard serves pages
            try:
                if httpx.get(f"{dashboard}/_stcore/health", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.5)
        printed = output.read_text()
        token = (tmp_path / "data" / "service-token").read_text().strip()
        assert f"Service token        {token}" in printed
        for port in ports.values():
            assert f":{port}" in printed
        assert f"Dashboard            {dashboard}" in printed
        r = httpx.post(
            f"http://127.0.0.1:{ports['API']}/v1/accounts",
            headers={"Authorization": f"Bearer {token}"},
            json={"email": "up@example.com", "password": "a long password"},
        )
        assert r.status_code == 201, r.text
        data = tmp_path / "data"  # readable by their owner only, the audit anchor too
        while not (data / "audit-anchor").exists():  # moved just after the record commits
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for name in ("twofa.db", "temporal.db", "pepper", "service-token", "audit-anchor"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    printed = output.read_text()
    children = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", printed)]
    assert len(children) == 5, printed
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in children), printed
    assert all(_port_is_free(port) for port in ports.values()), printed
