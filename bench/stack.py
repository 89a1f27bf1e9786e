"""A private Cockpit 2FA stack for one bench run: the embedded default, on free loopback ports.

Every part runs as its own process, as ``twofa up`` runs them, so each one's RSS and CPU can be
measured: the Temporal dev server (with ``twofa.devstack.dev_server_args``, persisted to the run's
data dir), ``twofa smtp-sink``, ``twofa worker``, ``twofa api`` (uvicorn), and the bare worker of
the engine-floor workflow. Children get a parent-death signal, so nothing outlives the bench.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client

from bench.floor import TASK_QUEUE as FLOOR_TASK_QUEUE
from tests.support.processes import free_port, stop_process, wait_for_http, worker_polls
from twofa.config import Settings
from twofa.devstack import dev_server_args, temporal_binary
from twofa.store.db import migrate
from twofa.supervised import die_with_parent
from twofa.temporal import connect

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Part:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    """Started by ``async with Stack.start(...)``; ``pids`` feeds the monitor."""

    settings: Settings
    data_dir: Path
    keep: bool = False
    parts: dict[str, Part] = field(default_factory=dict)
    client: Client | None = None

    @classmethod
    def create(cls, *, auto_logout_seconds: float, keep: bool = False) -> Stack:
        data_dir = Path(tempfile.mkdtemp(prefix="twofa-bench-", dir="/tmp"))
        temporal_port = free_port()
        settings = Settings(
            data_dir=data_dir,
            temporal_address=f"127.0.0.1:{temporal_port}",
            temporal_port=temporal_port,
            temporal_ui_port=free_port(),
            api_port=free_port(),
            smtp_port=free_port(),
            service_token=secrets.token_urlsafe(24),
            pepper=secrets.token_urlsafe(32),
            auto_logout_seconds=auto_logout_seconds,
        )
        return cls(settings=settings, data_dir=data_dir, keep=keep)

    # -- what the tables print

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    @property
    def dev_server_command(self) -> list[str]:
        return [temporal_binary(), "server", "start-dev", *dev_server_args(self.settings)]

    def pids(self) -> dict[str, int]:
        found = {name: part.process.pid for name, part in self.parts.items()}
        return {"bench (driver)": os.getpid(), **found}

    def environment_summary(self) -> dict[str, str]:
        env = self.settings.environment()
        shown = {k: v for k, v in env.items() if k.startswith("TWOFA_")}
        for secret in ("TWOFA_SERVICE_TOKEN", "TWOFA_PEPPER"):
            if secret in shown:
                shown[secret] = "<random per run>"
        return shown

    # -- lifecycle

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = self.data_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        self.parts[name] = Part(name, command, process, log)

    def _check_alive(self) -> None:
        for part in self.parts.values():
            if part.process.poll() is not None:
                tail = part.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{part.name} exited with {part.process.returncode}:\n{tail}")

    async def start(self) -> Client:
        settings = self.settings
        env = settings.environment()
        self._spawn("temporal dev server", self.dev_server_command, env)
        self._spawn("smtp sink", [str(BIN / "twofa"), "smtp-sink"], env)
        await asyncio.to_thread(migrate, settings.resolved_database_url)
        self.client = client = await connect(settings)
        self._spawn(
            "floor worker",
            [sys.executable, "-m", "bench.floor_worker", settings.resolved_temporal_address],
            env,
        )
        await self._start_app(settings, "worker", "api")
        floor = self.parts["floor worker"]
        await worker_polls(client, FLOOR_TASK_QUEUE, floor.process, floor.log)
        return client

    async def _start_app(self, settings: Settings, worker_name: str, api_name: str) -> None:
        """``twofa worker`` and ``twofa api`` on ``settings``, until the worker polls its queue
        and the API answers."""
        env = settings.environment()
        self._spawn(worker_name, [str(BIN / "twofa"), "worker"], env)
        self._spawn(api_name, [str(BIN / "twofa"), "api"], env)
        assert self.client is not None
        worker = self.parts[worker_name]
        await worker_polls(self.client, settings.temporal_task_queue, worker.process, worker.log)
        url = f"http://127.0.0.1:{settings.api_port}/healthz"
        await wait_for_http(url, alive=self._check_alive)

    async def start_beside(self, label: str, database_url: str) -> Settings:
        """An API and a worker of their own on another database, beside this stack's (the same
        dev server and sink, a task queue of their own): ``api (label)`` and ``worker
        (label)``. Returns their settings."""
        settings = self.settings.model_copy(
            update={
                "database_url": database_url,
                "api_port": free_port(),
                "temporal_task_queue": f"{self.settings.temporal_task_queue}-{label.lower()}",
            }
        )
        await asyncio.to_thread(migrate, database_url)
        await self._start_app(settings, f"worker ({label})", f"api ({label})")
        return settings

    async def stop_beside(self, label: str) -> None:
        for name in (f"api ({label})", f"worker ({label})"):
            part = self.parts.pop(name, None)
            if part is not None:
                await stop_process(part.process)

    async def restart_worker(self) -> None:
        """A fresh ``twofa worker`` (empty workflow cache), e.g. before measuring its memory."""
        part = self.parts["worker"]
        await stop_process(part.process)
        self._spawn("worker", part.command, self.settings.environment())
        assert self.client is not None
        worker = self.parts["worker"]
        await worker_polls(
            self.client, self.settings.temporal_task_queue, worker.process, worker.log
        )

    async def stop(self) -> None:
        """SIGTERM every part (API and workers first, the dev server last), then SIGKILL; in a
        thread, so that this process's own open transactions go on while a part commits."""
        order = ["api", "worker", "floor worker", "smtp sink", "temporal dev server"]
        for name in order:
            part = self.parts.get(name)
            if part is not None:
                await stop_process(part.process)
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tails(self, lines: int = 30) -> str:
        """The last lines each part wrote: what a failed run in CI leaves to read, its data dir
        gone. The parts' logs hold no secret (S4), so they may be printed."""
        tails = []
        for part in self.parts.values():
            text = part.log.read_text(errors="replace") if part.log.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            tails.append(f"--- the last {lines} lines of {part.name}'s log ---\n{tail}")
        return "\n".join(tails)
