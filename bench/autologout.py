"""Auto-logout: N enrollments started together; how late each session is refused (R3).

Accounts and one open session each are seeded in bulk; then every enable call is released at
once. Each session is watched three ways:

- through the API: ``GET /v1/session`` just before ``auto_logout_at``, then from
  ``auto_logout_at`` on every 20 ms until refused. The first refusal's arrival bounds the
  lateness from above (it includes the API's answer time); a 200 to a request sent after
  ``auto_logout_at`` bounds it from below;
- in the store (read-only, every 10 ms): the moment the session's expiry is capped or it is
  ended; the API refuses it from max(``auto_logout_at``, that moment) on, so this is the
  server-side lateness (±10 ms), also for calls answered after ``auto_logout_at``;
- the auto-logout timer itself: ``sessions.ended_at`` minus ``auto_logout_at``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.table import Table

from bench.client import epoch
from bench.context import Context
from bench.report import Check, latency_cells, latency_columns, process_table, settings_table
from bench.seeding import account_rows, insert_accounts, insert_sessions
from bench.stats import Summary, ms
from twofa.crypto import Keyring, new_token
from twofa.store.db import sqlite3  # the store's own SQLite: WAL is safe with it

POLL = 0.02
TARGET_MS = 100.0


@dataclass
class Enrollment:
    token: str
    session_id: str
    account_id: str
    sent: float = 0.0
    answered: float = 0.0
    status: int = 0
    error: str = ""
    auto_logout_at: float = 0.0
    checks: list[tuple[float, float, int]] = field(default_factory=list)  # sent, answered, status

    @property
    def first_refusal(self) -> tuple[float, float] | None:
        return next(((s, r) for s, r, status in self.checks if status == 401), None)

    @property
    def accepted_after(self) -> float:
        """How long after auto_logout_at a request was still answered 200 (0: never)."""
        late = [s - self.auto_logout_at for s, _, status in self.checks if status == 200]
        return max([0.0, *late])


class StoreWatcher:
    """Reads the seeded sessions every 10 ms; notes when each stops being open-ended."""

    def __init__(self, path: Path, session_ids: list[str], interval: float = 0.01) -> None:
        self.path = path
        self.ids = session_ids
        self.interval = interval
        self.changed: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-store-watch", daemon=True)

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=30)
        marks = ",".join("?" * len(self.ids))
        query = f"SELECT id, expires_at, ended_at FROM sessions WHERE id IN ({marks})"
        initial: dict[str, str] = {}
        try:
            while not self._stop.is_set():
                now = time.time()
                for session_id, expires_at, ended_at in connection.execute(query, self.ids):
                    first = initial.setdefault(session_id, expires_at)
                    if session_id not in self.changed and (expires_at != first or ended_at):
                        self.changed[session_id] = now
                self._stop.wait(self.interval)
        finally:
            connection.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _auto_logout_at(path: Path, account_ids: list[str]) -> dict[str, float]:
    if not account_ids:
        return {}
    connection = sqlite3.connect(path, timeout=30)
    try:
        marks = ",".join("?" * len(account_ids))
        rows = connection.execute(
            f"SELECT id, auto_logout_at FROM accounts WHERE id IN ({marks})", account_ids
        ).fetchall()
    finally:
        connection.close()
    return {account_id: _utc(at) for account_id, at in rows if at}


def _utc(value: str) -> float:
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


async def auto_logout_bench(ctx: Context) -> None:
    count = ctx.sizes.auto_logout_enrollments
    settings = ctx.stack.settings
    keyring = Keyring(settings.pepper_bytes)
    ctx.note(f"auto-logout: seeding {count} accounts with an open session each")
    password_hash = await asyncio.to_thread(keyring.hash_secret, "bench password")
    accounts = account_rows(
        count, password_hash=password_hash, prefix=f"alo{uuid.uuid4().hex[:6]}-", state="disabled"
    )
    now = datetime.now(UTC)
    enrollments = [
        Enrollment(token=new_token(), session_id=str(uuid.uuid4()), account_id=a["id"])
        for a in accounts
    ]
    sessions = [
        {
            "id": e.session_id,
            "account_id": a["id"],
            "device_id": None,
            "token_digest": keyring.digest("session", e.token),
            "created_at": now - timedelta(seconds=1),
            "expires_at": now + timedelta(hours=12),
        }
        for e, a in zip(enrollments, accounts, strict=True)
    ]
    url = settings.resolved_database_url
    await asyncio.to_thread(insert_accounts, url, accounts)
    await asyncio.to_thread(insert_sessions, url, sessions)
    assert await ctx.api.session_status(enrollments[0].token) == 200
    db_path = Path(url.removeprefix("sqlite:///"))
    watcher = StoreWatcher(db_path, [e.session_id for e in enrollments])
    watcher.start()
    gate = asyncio.Event()

    async def enroll(e: Enrollment) -> None:
        await gate.wait()
        e.sent = time.time()
        answer = await ctx.api.request(
            "PUT", "/v1/account/two-factor", session=e.token, json={"enabled": True}
        )
        e.answered, e.status = time.time(), answer.status
        if answer.status != 202:
            e.error = answer.body.get("error", "?")
            return
        e.auto_logout_at = epoch(answer.body["auto_logout_at"])
        if e.answered < e.auto_logout_at - 0.05:
            await asyncio.sleep(e.auto_logout_at - 0.03 - time.time())
            sent = time.time()
            status = await ctx.api.session_status(e.token)
            e.checks.append((sent, time.time(), status))
        await asyncio.sleep(max(e.auto_logout_at + 0.001 - time.time(), 0))
        deadline = max(e.auto_logout_at, time.time()) + 20
        while time.time() < deadline:
            sent = time.time()
            status = await ctx.api.session_status(e.token)
            e.checks.append((sent, time.time(), status))
            if status == 401:
                return
            await asyncio.sleep(POLL)

    ctx.note(f"auto-logout: {count} enable calls released together")
    with ctx.monitor() as monitor:
        tasks = [asyncio.create_task(enroll(e)) for e in enrollments]
        await asyncio.sleep(0.2)  # every task waits at the gate
        gate.set()
        await asyncio.gather(*tasks)
        ok = [e for e in enrollments if e.status == 202]
        last = max((e.auto_logout_at for e in ok), default=time.time())
        await asyncio.sleep(max(last + 3 - time.time(), 0))  # the timers' end_sessions
    failed = [e for e in enrollments if e.status != 202]
    if failed:  # did the workflow enable 2FA all the same, after the API gave up waiting?
        await asyncio.sleep(ctx.stack.settings.workflow_call_timeout_seconds)
    planned = await asyncio.to_thread(_auto_logout_at, db_path, [e.account_id for e in failed])
    if planned:
        await asyncio.sleep(max(max(planned.values()) + 3 - time.time(), 0))
    watcher.stop()
    assert monitor.usage is not None
    connection = sqlite3.connect(db_path, timeout=30)
    try:
        ended = {
            row[0]: row[1]
            for row in connection.execute(
                "SELECT id, ended_at FROM sessions WHERE end_reason = 'auto_logout'"
            )
        }
    finally:
        connection.close()
    for e in failed:  # their auto_logout_at, as the workflow projected it into the store
        e.auto_logout_at = planned.get(e.account_id, 0.0)
    enrolled = [e for e in enrollments if e.auto_logout_at]

    enable = ms([e.answered - e.sent for e in ok])
    answered_late = sum(1 for e in ok if e.answered > e.auto_logout_at)
    store = [
        max(watcher.changed[e.session_id] - e.auto_logout_at, 0.0)
        for e in enrolled
        if e.session_id in watcher.changed
    ]
    unchanged = sum(1 for e in enrolled if e.session_id not in watcher.changed)
    upper = [max(r[1] - e.auto_logout_at, 0.0) for e in ok if (r := e.first_refusal)]
    lower = [e.accepted_after for e in ok]
    early = sum(1 for e in ok if (r := e.first_refusal) and r[1] < e.auto_logout_at)
    never = sum(1 for e in ok if e.first_refusal is None)
    timer = [
        _utc(ended[e.session_id]) - e.auto_logout_at for e in enrolled if e.session_id in ended
    ]
    store_ms, lower_ms = ms(store), ms(lower)

    table = Table(
        title=f"auto-logout — {count} enrollments started together "
        f"(TWOFA_AUTO_LOGOUT_SECONDS={settings.auto_logout_seconds:g})",
        title_justify="left",
    )
    table.add_column("what")
    table.add_column("n", justify="right")
    latency_columns(table)
    table.add_column(f"> {TARGET_MS:.0f} ms", justify="right")

    def row(label: str, summary: Summary, values: list[float]) -> None:
        over = sum(1 for v in values if v * 1000 > TARGET_MS)
        table.add_row(label, str(summary.count), *latency_cells(summary), str(over))

    table.add_row(
        f"enable call ({len(ok)} ok, {count - len(ok)} failed; {answered_late} answered after "
        "their auto_logout_at)",
        str(enable.count),
        *latency_cells(enable),
        "",
    )
    row(
        f"[bold]refused after auto_logout_at: store (server side), all {len(enrolled)} enrolled[/]",
        store_ms,
        store,
    )
    row("refused after auto_logout_at: API, upper bound (first 401 answer)", ms(upper), upper)
    row("still accepted after auto_logout_at: API, lower bound (last 200 sent)", lower_ms, lower)
    row("auto-logout timer: sessions ended by the workflow (ended_at)", ms(timer), timer)
    window = max(e.answered for e in enrollments) - min(e.sent for e in enrollments)
    errors = Counter(f"{e.status} {e.error}" for e in failed)
    capped_anyway = sum(1 for e in failed if e.session_id in watcher.changed)
    table.caption = (
        f"{early} sessions refused before auto_logout_at, {never} never refused through the API "
        f"within 20 s of the answer; API polls every {POLL * 1000:.0f} ms from auto_logout_at"
        + (
            f"; failed enable calls: {dict(errors)}, of which {capped_anyway} were enabled by "
            "the workflow all the same (their session was capped later)"
            if failed
            else ""
        )
        + f"; {unchanged} enrolled sessions never capped nor ended"
    )
    worst = max(store_ms.max if store else 0.0, lower_ms.max if lower else 0.0)
    failures = count - len(ok)
    ctx.checks.append(
        Check(
            "auto-logout",
            f"every session refused ≤ {TARGET_MS:.0f} ms after auto_logout_at ({count} at once)",
            f"worst {worst:.0f} ms over {len(enrolled)} enrolled sessions (store p99 "
            f"{store_ms.p99:.0f} ms; no 200 after auto_logout_at through the API)",
            worst <= TARGET_MS
            and early == 0
            and unchanged == 0
            and len(enrolled) == count
            and never == 0,
            "enable caps every open session's expiry before it answers; the timer only tidies "
            f"(timer lateness p99 {ms(timer).p99 / 1000:.1f} s)",
        )
    )
    ctx.checks.append(
        Check(
            "auto-logout",
            f"(robustness) all {count} enable calls answered 202",
            f"{len(ok)} answered 202 (p50 {enable.p50 / 1000:.1f} s), {failures} got "
            f"{', '.join(errors) or '-'}",
            failures == 0,
            f"{count} enables served in {window:.0f} s = {count / window:.1f}/s, each 3 activities "
            f"in sequence; past TWOFA_WORKFLOW_CALL_TIMEOUT_SECONDS="
            f"{settings.workflow_call_timeout_seconds:g} the API answers 503 while the workflow "
            "still enables 2FA",
        )
    )
    ctx.results["auto_logout"] = {
        "enable_ms": enable,
        "store_lateness_ms": store_ms,
        "api_upper_ms": ms(upper),
        "api_lower_ms": lower_ms,
        "timer_lateness_ms": ms(timer),
        "failed": failures,
    }
    ctx.printer.tables(
        [table, process_table("auto-logout", monitor.usage, ("enrollment", max(len(ok), 1)))]
    )
    ctx.printer.tables(
        [
            settings_table(
                "auto-logout",
                {
                    "enrollments": f"{count}, every PUT /v1/account/two-factor released at once",
                    "seeding": "accounts (disabled) and one open session each, bulk-inserted",
                    "HTTP client": "aiohttp, up to 600 connections",
                    **ctx.common_settings(),
                },
            )
        ]
    )
