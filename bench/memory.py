"""Memory: worker and dev-server RSS with many accounts in ``active`` state.

Account rows are bulk-inserted; each account's workflow is started with the Progress it would
have once active (as ``twofa seed`` does), on the app's task queue, so the real worker runs it.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from rich.table import Table
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from bench.context import Context
from bench.report import Check, mib, num, process_table, settings_table
from bench.seeding import account_rows, insert_accounts
from twofa.crypto import Keyring
from twofa.workflows.messages import Progress, TwoFactorInput, TwoFactorState, workflow_id
from twofa.workflows.two_factor import STATE_KEY, TwoFactorWorkflow

TARGET_MIB = 300
START_CONCURRENCY = 50


async def memory_bench(ctx: Context) -> None:
    count = ctx.sizes.memory_accounts
    settings = ctx.stack.settings
    keyring = Keyring(settings.pepper_bytes)
    ctx.note(f"memory: {count:,} active accounts, one workflow each, on a fresh worker")
    await ctx.stack.restart_worker()  # its cache then holds only these accounts' runs
    password_hash = await asyncio.to_thread(keyring.hash_secret, "bench password")
    rows = account_rows(
        count, password_hash=password_hash, prefix=f"mem{uuid.uuid4().hex[:6]}-", state="active"
    )
    await asyncio.to_thread(insert_accounts, settings.resolved_database_url, rows)
    policy = settings.policy
    attributes = TypedSearchAttributes([SearchAttributePair(STATE_KEY, "active")])
    ids = [row["id"] for row in rows]
    next_index = 0

    async def starter() -> None:
        nonlocal next_index
        while next_index < len(ids):
            account_id = ids[next_index]
            next_index += 1
            progress = Progress(
                state=TwoFactorState.ACTIVE, enrollment_id=str(uuid.uuid4()), version=1
            )
            await ctx.client.start_workflow(
                TwoFactorWorkflow.run,
                TwoFactorInput(account_id=account_id, policy=policy, progress=progress),
                id=workflow_id(account_id),
                task_queue=settings.temporal_task_queue,
                search_attributes=attributes,
            )

    async def first_task_done(account_id: str) -> bool:
        handle = ctx.client.get_workflow_handle(workflow_id(account_id))
        return (await handle.describe()).history_length >= 4  # first workflow task completed

    with ctx.monitor() as monitor:
        started = time.perf_counter()
        await asyncio.gather(*(starter() for _ in range(START_CONCURRENCY)))
        start_seconds = time.perf_counter() - started
        tail = ids[-20:]
        while not all(await asyncio.gather(*(first_task_done(a) for a in tail))):
            await asyncio.sleep(0.5)
        drained = time.perf_counter() - started
        await asyncio.sleep(ctx.sizes.memory_hold_seconds)
    assert monitor.usage is not None
    usage = monitor.usage
    worker, dev_server = usage.peak("worker"), usage.peak("temporal dev server")

    table = Table(title=f"memory — {count:,} accounts in active state", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("workflows started", f"{count:,}")
    table.add_row(
        f"start rate (c={START_CONCURRENCY})", f"{num(count / start_seconds)} workflows/s"
    )
    table.add_row("until the worker ran every first task", f"{drained:.1f} s")
    table.add_row("[bold]worker peak RSS[/]", f"[bold]{mib(worker)} MiB[/]")
    table.add_row("dev server peak RSS", f"{mib(dev_server)} MiB")
    table.caption = (
        "the worker keeps at most max_cached_workflows (1000, SDK default) runs in memory; the "
        "rest are replayed from history when a message arrives"
    )
    ctx.checks.append(
        Check(
            "memory",
            f"worker peak RSS ≤ {TARGET_MIB} MiB with {count:,} active accounts",
            f"{mib(worker)} MiB (dev server {mib(dev_server)} MiB)",
            worker <= TARGET_MIB * 1024 * 1024,
            "the sticky cache (1000 runs) bounds the worker, not the number of accounts",
        )
    )
    ctx.results["memory"] = {"worker_peak": worker, "dev_server_peak": dev_server}
    ctx.printer.tables([table, process_table("memory", usage, ("account", count))])
    ctx.printer.tables(
        [
            settings_table(
                "memory",
                {
                    "accounts": f"{count:,} rows (active) bulk-inserted, and one TwoFactor "
                    "workflow each started with an active Progress (like twofa seed)",
                    "hold": f"{ctx.sizes.memory_hold_seconds:g} s after the last first task",
                    "worker": "restarted just before (empty cache), same command and settings",
                    **ctx.common_settings(),
                },
            )
        ]
    )
