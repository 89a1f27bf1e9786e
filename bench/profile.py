"""py-spy sampling of a stack process during a benchmark, summarized as tables.

``py-spy record --nonblocking --format raw`` (collapsed stacks) runs beside the process; the
summary groups samples by component (the deepest frame in a known package), by the service
operation on the stack, and lists the hottest functions by own samples.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

PY_SPY = Path(sys.executable).parent / "py-spy"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
#: (component, path fragment), the first match from the deepest frame up wins.
COMPONENTS = (
    ("argon2 (KDF)", "/argon2/"),
    ("argon2 (KDF)", "_ffi"),
    ("SQLite driver (aiosqlite, sqlite3)", "/aiosqlite/"),
    ("SQLite driver (aiosqlite, sqlite3)", "/sqlite3/"),
    ("SQLAlchemy", "/sqlalchemy/"),
    ("Temporal SDK", "/temporalio/"),
    ("protobuf", "/google/protobuf/"),
    ("HTTP server (uvicorn, h11, starlette, fastapi)", "/uvicorn/"),
    ("HTTP server (uvicorn, h11, starlette, fastapi)", "/h11/"),
    ("HTTP server (uvicorn, h11, starlette, fastapi)", "/starlette/"),
    ("HTTP server (uvicorn, h11, starlette, fastapi)", "/fastapi/"),
    ("pydantic", "/pydantic"),
    ("SMTP client and mail (aiosmtplib, email)", "/aiosmtplib/"),
    ("SMTP client and mail (aiosmtplib, email)", "/email/"),
    ("cryptography (Fernet seal)", "/cryptography/"),
    ("anyio (thread pool hand-off)", "/anyio/"),
    ("logging", "/logging/"),
    ("twofa (project code)", "/twofa/"),
    ("asyncio event loop", "/asyncio/"),
)
OPERATIONS = (
    "register",
    "login",
    "enable",
    "submit_code",
    "activate",
    "submit_pin",
    "current_session",
)


@dataclass
class Samples:
    stacks: Counter[tuple[str, ...]]

    @property
    def total(self) -> int:
        return sum(self.stacks.values())


class PySpy:
    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [str(PY_SPY), "record", "--pid", str(self.pid), "--rate", str(self.rate)]
        command += ["--format", "raw", "--full-filenames", "--nonblocking"]
        command += ["--output", str(self.output)]
        with self.output.with_suffix(".log").open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> Samples:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return read_samples(self.output)


def read_samples(path: Path) -> Samples:
    stacks: Counter[tuple[str, ...]] = Counter()
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[tuple(stack.split(";"))] += int(count)
    return Samples(stacks)


def _parse(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    return match.group("func"), match.group("path")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/twofa/", "/lib/python3.11/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return ("twofa/" + tail) if marker == "/twofa/" else tail
    return path.rsplit("/", 1)[-1]


def component(stack: tuple[str, ...]) -> str:
    for frame in reversed(stack):
        _, path = _parse(frame)
        for name, fragment in COMPONENTS:
            if fragment in path:
                return name
    return "other (stdlib, interpreter)"


def operation(stack: tuple[str, ...]) -> str:
    for frame in stack:
        func, path = _parse(frame)
        if "twofa/service/" in path and func in OPERATIONS:
            return func
        if path.endswith("twofa/activities/effects.py"):
            return f"activity {func}"
        if path.endswith("twofa/workflows/two_factor.py"):
            return f"workflow {func}"
    for frame in reversed(stack):
        func, _ = _parse(frame)
        if func in ("hash_secret", "verify_secret"):
            return f"{func} (thread pool)"
    return "event loop, not attributable (SQLAlchemy runs in greenlets)"


def profile_tables(title: str, samples: Samples, rate: int, top: int = 12) -> list[Table]:
    total = samples.total or 1
    by_component: Counter[str] = Counter()
    by_operation: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, count in samples.stacks.items():
        by_component[component(stack)] += count
        by_operation[operation(stack)] += count
        func, path = _parse(stack[-1])
        own[f"{func} ({_short(path)})"] += count
    seconds = samples.total / rate
    tables = []
    for heading, counter, limit in (
        ("by component (deepest known frame)", by_component, None),
        ("by operation on the stack", by_operation, None),
        (f"top {top} functions by own samples", own, top),
    ):
        table = Table(title=f"{title} — {heading}", title_justify="left")
        table.add_column(heading.split(" (")[0])
        table.add_column("samples", justify="right")
        table.add_column("% of busy", justify="right")
        for name, count in counter.most_common(limit):
            table.add_row(name, str(count), f"{100 * count / total:.1f}")
        table.caption = (
            f"{samples.total} non-idle samples at {rate} Hz ({seconds:.1f} thread-s): py-spy "
            "counts a thread waiting for a core (or in a C call) as busy, so argon2 threads "
            "queued behind each other weigh more than their CPU time"
        )
        tables.append(table)
    return tables
