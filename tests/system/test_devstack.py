"""`twofa up` (what `make run` runs): every part starts, answers, comes back, and stops with it."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.journey import Api, eventually, new_user
from tests.support.processes import TWOFA, free_port, listening, wait_for_http
from twofa.devstack import STARTSECS

#: Independent of the database backend: run once, in the SQLite pass of `make test`.
pytestmark = pytest.mark.single_backend


def _running(process: psutil.Process) -> bool:
    """Still there and not a zombie (an orphan's zombie waits for whoever reaps it)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Stack:
    """A running `twofa up`: its process, its ports, its data dir and what it printed."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    data: Path
    log: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['API']}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def part(self, name: str) -> psutil.Process | None:
        """The supervisor's child running `twofa NAME` (or the shim about to exec it, same pid)."""
        for child in psutil.Process(self.process.pid).children():
            try:
                if child.cmdline()[-2:] == [TWOFA, name]:
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    async def restarted(
        self, name: str, old: psutil.Process, timeout: float = 120
    ) -> psutil.Process:
        """The part's new process, once the supervisor started one in place of ``old``."""
        found: list[psutil.Process] = []

        def new_one() -> bool:
            part = self.part(name)
            if part is not None and part.pid != old.pid and _running(part):
                found.append(part)
            return bool(found)

        await eventually(new_one, lambda: f"{name} restarted:\n{self.output()}", timeout)
        return found[0]

    async def printed(self, line: str, timeout: float) -> None:
        await eventually(
            lambda: line in self.output(), lambda: f"{line!r}:\n{self.output()}", timeout
        )


@contextmanager
def _twofa_up(tmp_path: Path) -> Iterator[Stack]:
    ports = {name: free_port() for name in ("API", "TEMPORAL", "TEMPORAL_UI", "SMTP", "DASHBOARD")}
    data = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TWOFA_")},
        "TWOFA_DATA_DIR": str(data),
        **{f"TWOFA_{name}_PORT": str(port) for name, port in ports.items()},
    }
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen([TWOFA, "up"], env=env, stdout=out, stderr=subprocess.STDOUT)
    stack = Stack(process, ports, data, log)
    try:
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


async def _wait_healthy(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=2) as http:

        async def healthy() -> bool:
            assert stack.process.poll() is None, stack.output()
            try:
                return (await http.get(f"{stack.api_url}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(healthy, lambda: f"the API to answer:\n{stack.output()}", 120)


def _listening(ports: dict[str, int]) -> set[tuple[int, int | None]]:
    """(port, pid) of every socket still listening on one of ``ports``."""
    return {
        (c.laddr.port, c.pid)
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports.values()
    }


async def _assert_all_gone(stack: Stack, children: list[psutil.Process]) -> None:
    """Every child ended and every port released (a killed process with several threads shows
    as a zombie before its last thread has closed its sockets, so both are waited for)."""
    await eventually(
        lambda: not any(_running(c) for c in children) and not _listening(stack.ports),
        lambda: (
            f"every child gone; left: {[c for c in children if _running(c)]}, (port, pid) "
            f"still listening: {_listening(stack.ports)}\n{stack.output()}"
        ),
        30,
    )


@contextmanager
def _healthz_throughout(url: str) -> Iterator[list[int]]:
    """/healthz asked every 0.1 s while the block runs: every status (0 for no answer)."""
    statuses: list[int] = []
    done = threading.Event()

    def ask() -> None:
        while not done.is_set():
            try:
                statuses.append(httpx.get(f"{url}/healthz", timeout=5).status_code)
            except httpx.HTTPError:
                statuses.append(0)
            done.wait(0.1)

    thread = threading.Thread(target=ask)
    thread.start()
    try:
        yield statuses
    finally:
        done.set()
        thread.join()


async def test_up_starts_everything_and_sigterm_stops_every_child(tmp_path: Path) -> None:
    with _twofa_up(tmp_path) as stack:
        await _wait_healthy(stack)
        r = httpx.get(f"{stack.api_url}/healthz", timeout=2)
        assert r.json() == {"status": "ok", "database": True, "temporal": True}
        dashboard = f"http://127.0.0.1:{stack.ports['DASHBOARD']}"

        async def dashboard_serves() -> bool:  # streamlit's own health endpoint
            assert stack.process.poll() is None, stack.output()
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(f"{dashboard}/_stcore/health")).text == "ok"
            except httpx.HTTPError:
                return False

        await eventually(dashboard_serves, lambda: f"the dashboard:\n{stack.output()}", 120)
        printed = stack.output()
        token = (stack.data / "service-token").read_text().strip()
        assert f"Service token        {token}" in printed
        for port in stack.ports.values():
            assert f":{port}" in printed
        assert f"Dashboard            {dashboard}" in printed
        r = httpx.post(
            f"{stack.api_url}/v1/accounts",
            headers={"Authorization": f"Bearer {token}"},
            json={"email": "up@example.com", "password": "a long password"},
        )
        assert r.status_code == 201, r.text
        data = stack.data  # readable by their owner only, the audit anchor too
        anchor = data / "audit-anchor"  # moved just after the record commits
        await eventually(anchor.exists, lambda: f"the anchor:\n{stack.output()}", 30, 0.05)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for name in ("twofa.db", "temporal.db", "pepper", "service-token", "audit-anchor"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
        children = stack.children()
        supervised = psutil.Process(stack.process.pid).children()
        assert len(supervised) == 6, supervised  # five parts and the output relay
        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(timeout=60) == 0, stack.output()
        await _assert_all_gone(stack, children)


async def test_killed_parts_come_back_and_the_journey_goes_on(tmp_path: Path) -> None:
    """SIGKILL of the SMTP sink, the worker, then the API: each is restarted, said in the log,
    and the next step of a journey succeeds; Ctrl-C then stops everything, exit 0."""
    with _twofa_up(tmp_path) as stack:
        await _wait_healthy(stack)
        api = Api(stack.api_url, (stack.data / "service-token").read_text().strip(), stack.data)
        try:
            user = await api.registered_and_logged_in(new_user())

            sink = stack.part("smtp-sink")
            assert sink is not None, stack.output()
            sink.kill()
            await stack.restarted("smtp-sink", sink)
            await eventually(
                lambda: listening(stack.ports["SMTP"]),
                lambda: f"the SMTP sink to listen again:\n{stack.output()}",
                60,
            )
            await api.enable(user)
            code = await api.code_mail(user, timeout=60)

            worker = stack.part("worker")
            assert worker is not None, stack.output()
            with _healthz_throughout(stack.api_url) as statuses:
                worker.kill()
                await stack.restarted("worker", worker)
                await eventually(
                    lambda: stack.output().count("worker polling") == 2,
                    lambda: f"the new worker to poll:\n{stack.output()}",
                    120,
                )
                login = await api.login_ok(user)
                assert login["outcome"] == "activation_code_required", login
                r = await api.submit_code(login["login_id"], code)
                assert r.status_code == 200, r.text
                r = await api.activate(login["login_id"], user)
                assert r.status_code == 200, r.text
            assert statuses and set(statuses) == {200}, statuses

            server = stack.part("api")
            assert server is not None, stack.output()
            server.kill()
            await stack.restarted("api", server)
            await wait_for_http(f"{stack.api_url}/healthz", 120)
            r = await api.pin(login["login_id"], user.pin)
            assert r.status_code == 200, r.text
        finally:
            await api.close()
        printed = stack.output()
        for name in ("smtp-sink", "worker", "api"):
            assert f"exited: {name} (terminated by SIGKILL; not expected)" in printed, printed
            # "restarting", or the back-off line when it died within STARTSECS of its start
            said = rf"^\S+ {re.escape(name)} +\| (restarting|died within {STARTSECS} s of its)"
            assert re.search(said, printed, re.M), printed
        children = stack.children()
        stack.process.send_signal(signal.SIGINT)
        assert stack.process.wait(timeout=60) == 0, stack.output()
        await _assert_all_gone(stack, children)


async def test_a_part_that_keeps_dying_backs_off_and_sigkill_of_up_takes_every_child(
    tmp_path: Path,
) -> None:
    """The SMTP sink killed again as soon as it is back: each restart waits 1 s, 2 s, 3 s longer
    while the rest serves, and the sink works once left alone. Then a SIGKILL of `twofa up`
    alone (no chance to clean up) still ends every child: only the parent-death signal acts."""
    with _twofa_up(tmp_path) as stack:
        await _wait_healthy(stack)
        sink = stack.part("smtp-sink")
        assert sink is not None, stack.output()
        sink.kill()  # maybe past STARTSECS already: restarted at once
        sink = await stack.restarted("smtp-sink", sink)
        for tries in (1, 2, 3):
            sink.kill()  # within STARTSECS of its start
            killed_at = time.monotonic()
            sink = await stack.restarted("smtp-sink", sink)
            assert time.monotonic() - killed_at >= tries  # supervisord waited before restarting
            said = f"died within {STARTSECS} s of its start ({tries} in a row), next try in {tries}"
            await stack.printed(said, 60)
        await eventually(
            lambda: listening(stack.ports["SMTP"]),
            lambda: f"the SMTP sink to listen:\n{stack.output()}",
            120,
        )
        api = Api(stack.api_url, (stack.data / "service-token").read_text().strip(), stack.data)
        try:
            user = await api.registered_and_logged_in(new_user())
            await api.enable(user)
            await api.code_mail(user, timeout=60)
        finally:
            await api.close()
        assert "gave up" not in stack.output()
        children = stack.children()
        assert len(children) >= 6, children
        stack.process.kill()
        stack.process.wait()
        await _assert_all_gone(stack, children)
