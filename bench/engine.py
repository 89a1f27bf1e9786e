"""Engine floor: the bare enrollment-shaped workflow driven straight through the Temporal client."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from rich.table import Table
from temporalio.client import Client

from bench.client import run_pool
from bench.context import Context
from bench.floor import TASK_QUEUE, EnrollmentShape
from bench.monitor import Usage
from bench.report import latency_cells, latency_columns, num, process_table, settings_table
from bench.stats import Summary, ms

OPS = ("start", "update 1", "update 2", "done")


@dataclass
class FloorRun:
    flows: int
    concurrency: int
    errors: int
    wall_seconds: float
    flows_per_second: float
    flow: Summary
    ops: dict[str, Summary]


async def floor_run(client: Client, flows: int, concurrency: int) -> FloorRun:
    prefix = f"bench-floor-{uuid.uuid4().hex[:8]}"

    async def flow(index: int) -> dict[str, float]:
        marks = [time.perf_counter()]
        handle = await client.start_workflow(
            EnrollmentShape.run, id=f"{prefix}-{index}", task_queue=TASK_QUEUE
        )
        marks.append(time.perf_counter())
        await handle.execute_update(EnrollmentShape.step)
        marks.append(time.perf_counter())
        await handle.execute_update(EnrollmentShape.step)
        marks.append(time.perf_counter())
        assert await handle.result() == 2
        marks.append(time.perf_counter())
        took = {op: marks[i + 1] - marks[i] for i, op in enumerate(OPS)}
        took["flow"] = marks[-1] - marks[0]
        return took

    run = await run_pool(flows, concurrency, flow)
    return FloorRun(
        flows=len(run.results),
        concurrency=concurrency,
        errors=len(run.errors),
        wall_seconds=run.wall_seconds,
        flows_per_second=run.per_second,
        flow=ms([r["flow"] for r in run.results]),
        ops={op: ms([r[op] for r in run.results]) for op in OPS},
    )


async def warm_floor(ctx: Context) -> None:
    await floor_run(ctx.client, 5, 5)


def floor_tables(title: str, run: FloorRun, usage: Usage | None) -> list[Table]:
    table = Table(title=f"{title} — flows/s and latency", title_justify="left")
    table.add_column("what")
    latency_columns(table)
    table.add_row(
        f"whole flow (c={run.concurrency}, {run.flows} flows, {run.errors} errors): "
        f"[bold]{run.flows_per_second:.1f} flows/s[/]",
        *latency_cells(run.flow),
    )
    for op, summary in run.ops.items():
        table.add_row(f"  {op}", *latency_cells(summary))
    tables = [table]
    if usage is not None:
        tables.append(process_table(title, usage, per=("flow", run.flows)))
    return tables


async def engine_floor(ctx: Context) -> None:
    sizes = ctx.sizes
    ctx.note(f"engine floor: {sizes.floor_flows} flows at c={sizes.floor_concurrency}")
    await warm_floor(ctx)
    with ctx.monitor() as monitor:
        run = await floor_run(ctx.client, sizes.floor_flows, sizes.floor_concurrency)
    assert monitor.usage is not None
    ctx.results["engine_floor"] = run
    settings = {
        "workflow": "BenchEnrollmentShape: start, update, update, done; one no-op activity "
        "per update (bench/floor.py)",
        "driven by": "temporalio Client in the bench process (start_workflow, execute_update "
        "x2, result)",
        "worker": "bench.floor_worker: its own process, Worker with SDK defaults",
        "flows / concurrency / warm-up": f"{sizes.floor_flows} / {sizes.floor_concurrency} / 5",
        **ctx.common_settings(),
    }
    ctx.printer.tables([*floor_tables("engine floor", run, monitor.usage)])
    ctx.printer.tables([settings_table("engine floor", settings)])
    ctx.note(f"engine floor: {num(run.flows_per_second)} flows/s")
