"""Login: trusted-browser logins with the PIN, next to the bare argon2 work they need.

Each login is ``POST /v1/login`` (password + device token, answered ``pin_required``) and
``POST /v1/login/pin``: two argon2id verifications (password, PIN). The bare cost of that
pair is measured in this process at the same concurrency, just before each level. "No login
touches Temporal" is shown by the history length of every account's workflow before and after.
All of it runs on the stack's database, then on a throwaway PostgreSQL server with its default
durability (where Debian's packages are installed), through an API and a worker of its own.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rich.table import Table

from bench.client import ApiClient, BenchUser, journey, new_user, pin_login, run_pool
from bench.context import Context
from bench.monitor import Usage
from bench.profile import PySpy, profile_tables
from bench.report import Check, num, process_table, settings_table
from bench.stats import Summary, ms
from twofa.config import Settings
from twofa.crypto import Keyring
from twofa.store.db import Database
from twofa.wiring import Services
from twofa.workflows.messages import workflow_id


@dataclass
class LoginLevel:
    concurrency: int
    logins: int
    errors: list[str]
    per_second: float
    total: Summary
    login_call: Summary
    pin_call: Summary
    bare: Summary
    bare_per_second: float
    direct: Summary
    usage: Usage


class BarePairs:
    """The argon2 work of one login: verify the password, then the PIN, as the API does."""

    def __init__(self, keyring: Keyring, user: BenchUser) -> None:
        self.keyring = keyring
        self.user = user
        self.password_hash = keyring.hash_secret(user.password)
        self.pin_hash = keyring.hash_secret(user.pin)

    def pair(self, _: int = 0) -> float:
        start = time.perf_counter()
        assert self.keyring.verify_secret(self.password_hash, self.user.password)
        assert self.keyring.verify_secret(self.pin_hash, self.user.pin)
        return time.perf_counter() - start

    def batch(self, concurrency: int) -> tuple[list[float], float]:
        """``concurrency`` pairs at once, one thread each; their durations and the wall time."""
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            took = list(pool.map(self.pair, range(concurrency)))
        return took, time.perf_counter() - start


async def history_lengths(ctx: Context, users: list[BenchUser]) -> dict[str, int]:
    async def length(user: BenchUser) -> tuple[str, int]:
        described = await ctx.client.get_workflow_handle(workflow_id(user.account_id)).describe()
        return user.account_id, described.history_length

    return dict(await asyncio.gather(*(length(u) for u in users)))


async def login_bench(ctx: Context) -> None:
    stack = ctx.stack.settings
    backend = "PostgreSQL" if stack.database_url else "SQLite"
    chosen = ctx.sizes.login_backends.split(",")
    if backend.lower() in chosen:
        await _login_on(ctx, backend, stack, ctx.api, "api")
    if "postgresql" not in chosen or backend == "PostgreSQL":
        return
    with ctx.throwaway_postgresql("login", durable=True) as url:
        if url is None:
            return
        ctx.note("login: an API and a worker on a throwaway PostgreSQL server")
        settings = await ctx.stack.start_beside("PostgreSQL", url)
        api = ApiClient(f"http://127.0.0.1:{settings.api_port}", settings.resolved_service_token)
        try:
            await _login_on(ctx, "PostgreSQL", settings, api, "api (PostgreSQL)")
        finally:
            await api.close()
            await ctx.stack.stop_beside("PostgreSQL")


async def _login_on(
    ctx: Context, backend: str, stack: Settings, api: ApiClient, api_part: str
) -> None:
    """The login levels through ``api``, whose process is ``api_part``, on ``stack``'s
    database."""
    sizes = ctx.sizes
    accounts = max(c for c, _ in sizes.login_levels)
    ctx.note(f"login on {backend}: {accounts} active accounts through the journey")
    users = [new_user("login") for _ in range(accounts)]
    setup = await run_pool(accounts, min(8, accounts), lambda i: journey(api, ctx.mails, users[i]))
    if setup.errors:
        raise RuntimeError(f"login setup failed: {setup.errors[0]}")
    # Quiet workflows: every auto-logout timer has fired before the first count.
    wait = max(u.auto_logout_at for u in users) - time.time() + 2
    if wait > 0:
        await asyncio.sleep(wait)
    before = await history_lengths(ctx, users)
    bare = await asyncio.to_thread(BarePairs, Keyring(stack.pepper_bytes), new_user("bare"))
    await run_pool(min(accounts, 4), 4, lambda i: pin_login(api, users[i]))  # warm-up
    # The same login through the service layer in this process: what HTTP adds, and what not.
    db = Database(stack.resolved_database_url)
    service = Services.on(stack, db, ctx.client).users

    async def direct(user: BenchUser) -> float:
        start = time.perf_counter()
        view = await service.login(user.email, user.password, user.device_token)
        assert view.outcome == "pin_required" and view.login_id, view
        done = await service.submit_pin(view.login_id, user.pin)
        assert done.outcome == "authenticated", done
        return time.perf_counter() - start

    await direct(users[0])
    levels: list[LoginLevel] = []
    for concurrency, count in sizes.login_levels:
        rounds = max(count // concurrency, 1)
        ctx.note(f"login: {rounds} rounds of {concurrency} bare argon2 pairs + logins at once")
        bare_took: list[float] = []
        bare_wall = 0.0
        results: list[tuple[float, float]] = []
        errors: list[str] = []
        login_wall = 0.0
        direct_took: list[float] = []
        with ctx.monitor() as monitor:
            for _ in range(rounds):  # interleaved, so both see the same noise of the machine
                took, wall = await asyncio.to_thread(bare.batch, concurrency)
                bare_took += took
                bare_wall += wall
                run = await run_pool(concurrency, concurrency, lambda i: pin_login(api, users[i]))
                results += run.results
                errors += [str(e) for e in run.errors]
                login_wall += run.wall_seconds
                if concurrency == 1:
                    direct_took.append(await direct(users[0]))
        assert monitor.usage is not None
        levels.append(
            LoginLevel(
                concurrency=concurrency,
                logins=len(results),
                errors=errors,
                per_second=len(results) / login_wall,
                total=ms([a + b for a, b in results]),
                login_call=ms([a for a, _ in results]),
                pin_call=ms([b for _, b in results]),
                bare=ms(bare_took),
                bare_per_second=len(bare_took) / bare_wall,
                direct=ms(direct_took),
                usage=monitor.usage,
            )
        )
        ctx.note(f"login c={concurrency}: {levels[-1].per_second:.1f}/s")
    await db.dispose()
    profiles: list[Table] = []
    if ctx.profile:  # a pass of its own: py-spy's CPU stays out of the measured levels
        count = 200
        ctx.note(f"login: {count} more logins at c=1 under py-spy")
        profile = ctx.stack.data_dir / f"api-login-{backend.lower()}.prof"
        spy = PySpy(ctx.stack.parts[api_part].process.pid, profile)
        spy.start()
        await run_pool(count, 1, lambda i: pin_login(api, users[i % len(users)]))
        profiles = profile_tables(
            f"profile: {api_part} process, {count} logins at c=1", spy.stop(), spy.rate
        )
    after = await history_lengths(ctx, users)
    new_events = sum(after[a] - before[a] for a in before)

    table = Table(
        title=f"login on {backend} — trusted browser + PIN, vs bare argon2", title_justify="left"
    )
    for column in (
        "concurrency",
        "logins",
        "errors",
        "logins/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "login call p50",
        "PIN call p50",
        "bare argon2 pair p50",
        "bare pair p95",
        "bare pairs/s",
        "p50 / bare p50",
        "in-process service p50",
    ):
        table.add_column(column, justify="right")
    for level in levels:
        ratio = level.total.p50 / level.bare.p50
        table.add_row(
            str(level.concurrency),
            str(level.logins),
            str(len(level.errors)),
            num(level.per_second),
            num(level.total.p50),
            num(level.total.p95),
            num(level.total.p99),
            num(level.login_call.p50),
            num(level.pin_call.p50),
            num(level.bare.p50),
            num(level.bare.p95),
            num(level.bare_per_second),
            f"[bold]{ratio:.2f}x[/]",
            num(level.direct.p50),
        )
        ctx.checks.append(
            Check(
                f"login, {backend}",
                f"c={level.concurrency}: p50 ≤ 1.3x bare argon2 (2 verifications)",
                f"{level.total.p50:.1f} ms vs {level.bare.p50:.1f} ms = {ratio:.2f}x",
                ratio <= 1.3,
                f"argon2 is {100 * level.bare.p50 / level.total.p50:.0f} % of the p50; "
                + (
                    f"in-process (no HTTP) p50 {level.direct.p50:.1f} ms: the service's SQL "
                    f"round trips add {level.direct.p50 - level.bare.p50:.1f} ms, HTTP "
                    f"{level.total.p50 - level.direct.p50:.1f} ms"
                    if level.direct.count
                    else "the rest: HTTP, SQL round trips and write transactions queued with "
                    "the argon2 threads"
                ),
            )
        )
    table.caption = (
        "latency = login call + PIN call, seen by the client; bare = verify_secret(password) + "
        "verify_secret(PIN) in the bench process, same concurrency (threads), interleaved; "
        "in-process service = TwoFactorService.login + submit_pin called in the bench process "
        "(same store, no HTTP), at c=1"
    )
    temporal = Table(title=f"login on {backend} — no login touches Temporal", title_justify="left")
    temporal.add_column("accounts (workflows)", justify="right")
    temporal.add_column("history events before", justify="right")
    temporal.add_column("after", justify="right")
    temporal.add_column("new events", justify="right")
    temporal.add_row(
        str(len(users)),
        str(sum(before.values())),
        str(sum(after.values())),
        f"[bold]{new_events}[/]",
    )
    total_logins = sum(level.logins for level in levels)
    temporal.caption = f"{total_logins} measured logins (+ warm-up) on these accounts"
    ctx.checks.append(
        Check(
            f"login, {backend}",
            "no login touches Temporal",
            f"{new_events} new history events after {total_logins} logins",
            new_events == 0,
            "the hot path reads the store's projection",
        )
    )
    tables: list[Table] = [table, temporal, *profiles]
    tables += [
        process_table(f"login on {backend} c={lv.concurrency}", lv.usage, ("login", lv.logins))
        for lv in levels
    ]
    ctx.printer.tables(tables)
    ctx.results[f"login, {backend}"] = levels
    settings = {
        "accounts": f"{accounts} active accounts made by the journey (c=8), each with its device",
        "levels (concurrency: logins)": ", ".join(f"{c}: {n}" for c, n in sizes.login_levels),
        "client i uses account i": "no two concurrent logins share an account",
        "rounds": "each level alternates a batch of c bare argon2 pairs (c threads in the bench "
        "process) and a batch of c logins (c HTTP clients), so both see the same machine noise; "
        "the bench's CPU below includes the bare pairs",
        "warm-up": f"{min(accounts, 4)} logins, not counted",
        **ctx.common_settings(),
    }
    if stack is not ctx.stack.settings:
        settings["database"] = (
            f"a throwaway PostgreSQL server ({stack.database_url}), fsync and synchronous_commit "
            f"on, through its own API and worker (task queue {stack.temporal_task_queue})"
        )
    ctx.printer.tables([settings_table(f"login on {backend}", settings)])
