"""Journey: the README's whole journey through the HTTP API, against the engine floor in one run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from rich.table import Table

from bench.client import JOURNEY_STEPS, journey, new_user, run_pool
from bench.context import Context
from bench.engine import FloorRun, floor_run, floor_tables, warm_floor
from bench.monitor import Usage
from bench.profile import PySpy, profile_tables
from bench.report import (
    Check,
    latency_cells,
    latency_columns,
    num,
    process_table,
    settings_table,
)
from bench.stats import Summary, ms
from twofa.crypto import Keyring

#: argon2 work per journey: register and activate hash, both logins and the PIN verify.
HASHES_PER_JOURNEY = 2
VERIFIES_PER_JOURNEY = 3


@dataclass
class JourneyLevel:
    concurrency: int
    journeys: int
    errors: list[str]
    wall_seconds: float
    per_second: float
    total: Summary
    steps: dict[str, Summary]
    usage: Usage


@dataclass
class Argon2Cost:
    hash: Summary
    verify: Summary

    @property
    def per_journey_ms(self) -> float:
        return HASHES_PER_JOURNEY * self.hash.p50 + VERIFIES_PER_JOURNEY * self.verify.p50


def argon2_cost(pepper: bytes, samples: int) -> Argon2Cost:
    """The bare KDF, in this process, one call at a time."""
    keyring = Keyring(pepper)
    hashes, verifies = [], []
    stored = keyring.hash_secret("bench password")
    for _ in range(samples):
        start = time.perf_counter()
        keyring.hash_secret("bench password")
        hashes.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert keyring.verify_secret(stored, "bench password")
        verifies.append(time.perf_counter() - start)
    return Argon2Cost(ms(hashes), ms(verifies))


async def journey_level(ctx: Context, concurrency: int, count: int) -> JourneyLevel:
    users = [new_user(f"journey-c{concurrency}") for _ in range(count)]
    with ctx.monitor() as monitor:
        run = await run_pool(count, concurrency, lambda i: journey(ctx.api, ctx.mails, users[i]))
    assert monitor.usage is not None
    return JourneyLevel(
        concurrency=concurrency,
        journeys=len(run.results),
        errors=[str(e) for e in run.errors],
        wall_seconds=run.wall_seconds,
        per_second=run.per_second,
        total=ms([sum(r.values()) for r in run.results]),
        steps={step: ms([r[step] for r in run.results]) for step in JOURNEY_STEPS},
        usage=monitor.usage,
    )


def _cpu_ms(usage: Usage, name: str, per: int) -> float:
    seconds = sum(p.cpu_seconds for p in usage.processes if p.name.startswith(name))
    return 1000 * seconds / max(per, 1)


async def journey_bench(ctx: Context) -> None:
    sizes = ctx.sizes
    pepper = ctx.stack.settings.pepper_bytes
    ctx.note("journey: warm-up")
    await warm_floor(ctx)
    await run_pool(sizes.journey_warmup, 1, lambda _: journey(ctx.api, ctx.mails, new_user("warm")))
    kdf = argon2_cost(pepper, 10 if ctx.quick else 30)
    levels: list[JourneyLevel] = []
    floors: list[tuple[str, FloorRun, Usage]] = []
    profiles: list[Table] = []
    for concurrency, count in sizes.journey_levels:
        is_reference = concurrency == sizes.journey_ratio_concurrency
        await ctx.settle()
        if is_reference:
            ctx.note(f"journey: engine floor reference before c={concurrency}")
            with ctx.monitor() as monitor:
                before = await floor_run(ctx.client, sizes.floor_flows, concurrency)
            assert monitor.usage is not None
            floors.append(("before", before, monitor.usage))
        ctx.note(f"journey: {count} journeys at c={concurrency}")
        level = await journey_level(ctx, concurrency, count)
        levels.append(level)
        ctx.note(f"journey c={concurrency}: {level.per_second:.2f} journeys/s")
        if is_reference:
            await ctx.settle()
            ctx.note(f"journey: engine floor reference after c={concurrency}")
            with ctx.monitor() as monitor:
                after = await floor_run(ctx.client, sizes.floor_flows, concurrency)
            assert monitor.usage is not None
            floors.append(("after", after, monitor.usage))

    if ctx.profile:  # a pass of its own: py-spy's CPU stays out of the measured levels
        concurrency = sizes.journey_ratio_concurrency
        count = min(100, max(n for _, n in sizes.journey_levels))
        await ctx.settle()
        ctx.note(f"journey: {count} more journeys at c={concurrency} under py-spy")
        spies = []
        for name in ("api", "worker"):
            spy = PySpy(ctx.stack.parts[name].process.pid, ctx.stack.data_dir / f"{name}.prof")
            spy.start()
            spies.append((name, spy))
        profiled = await journey_level(ctx, concurrency, count)
        for name, spy in spies:
            profiles += profile_tables(
                f"profile: {name} process, {count} journeys at c={concurrency}",
                spy.stop(),
                spy.rate,
            )
        hottest = max(JOURNEY_STEPS, key=lambda step: profiled.steps[step].p50)
        ctx.note(
            f"journey: hottest step under py-spy: {hottest} "
            f"(p50 {profiled.steps[hottest].p50:.0f} ms of {profiled.total.p50:.0f} ms)"
        )

    throughput = Table(title="journey — throughput", title_justify="left")
    throughput.add_column("concurrency", justify="right")
    throughput.add_column("journeys", justify="right")
    throughput.add_column("errors", justify="right")
    throughput.add_column("journeys/s", justify="right")
    latency_columns(throughput, "ms (journey)")
    for part in ("api", "worker", "temporal", "smtp", "bench"):
        throughput.add_column(f"CPU ms/journey {part}", justify="right")
    for level in levels:
        throughput.add_row(
            str(level.concurrency),
            str(level.journeys),
            str(len(level.errors)),
            f"[bold]{level.per_second:.2f}[/]",
            *latency_cells(level.total, 0),
            *(
                num(_cpu_ms(level.usage, part, level.journeys), 0)
                for part in ("api", "worker", "temporal", "smtp", "bench")
            ),
        )
    steps = Table(title="journey — per-step latency (ms)", title_justify="left")
    steps.add_column("step")
    for level in levels:
        for name in ("p50", "p95", "p99"):
            steps.add_column(f"c={level.concurrency} {name}", justify="right")
    for step in JOURNEY_STEPS:
        row = [step]
        for level in levels:
            s = level.steps[step]
            row += [num(s.p50), num(s.p95), num(s.p99)]
        steps.add_row(*row)
    tables: list[Table] = [throughput, steps]
    for level in levels:
        if level.errors:
            errors = Table(title=f"journey c={level.concurrency} — errors (first 5)")
            errors.add_column("error", overflow="fold")
            for error in level.errors[:5]:
                errors.add_row(error)
            tables.append(errors)

    reference = next(
        (lv for lv in levels if lv.concurrency == sizes.journey_ratio_concurrency), None
    )
    if reference is not None and floors:
        floor_rate = sum(run.flows_per_second for _, run, _ in floors) / len(floors)
        ratio = reference.per_second / floor_rate if floor_rate else 0.0
        cpus = os.cpu_count() or 1
        journey_cpu = 1000 * reference.usage.own_cpu_seconds / max(reference.journeys, 1)
        floor_cpu = sum(
            1000 * usage.own_cpu_seconds / max(run.flows, 1) for _, run, usage in floors
        ) / len(floors)
        # issue 12's target: the CPU a journey needs (a bare flow's plus its argon2) over the
        # CPU it takes, across every process of the stack
        efficiency = (floor_cpu + kdf.per_journey_ms) / journey_cpu if journey_cpu else 0.0
        kdf_ceiling = 1000 * cpus / kdf.per_journey_ms
        cpu_ceiling = 1000 * cpus / journey_cpu if journey_cpu else 0.0
        c = reference.concurrency
        compare = Table(title=f"journey c={c} vs engine floor c={c}", title_justify="left")
        compare.add_column("what")
        compare.add_column("value", justify="right")
        compare.add_column("note", overflow="fold")
        for label, run, usage in floors:
            compare.add_row(
                f"engine floor ({label} the journeys)",
                f"{run.flows_per_second:.1f} flows/s",
                f"{1000 * usage.own_cpu_seconds / max(run.flows, 1):.0f} CPU ms per flow "
                "(all processes)",
            )
        compare.add_row(
            f"journey c={c}",
            f"{reference.per_second:.2f} journeys/s",
            f"{journey_cpu:.0f} CPU ms per journey (all processes)",
        )
        compare.add_row(
            "argon2 per journey (bare, this process)",
            f"{kdf.per_journey_ms:.0f} ms",
            f"{HASHES_PER_JOURNEY} hashes x {kdf.hash.p50:.1f} ms + {VERIFIES_PER_JOURNEY} "
            f"verifications x {kdf.verify.p50:.1f} ms (m=19456 KiB, t=2, p=1: the S3 floor)",
        )
        compare.add_row(
            "[bold]journey efficiency[/]",
            f"[bold]{efficiency:.2f}[/]",
            f"(floor {floor_cpu:.0f} + argon2 {kdf.per_journey_ms:.0f}) CPU ms ÷ journey "
            f"{journey_cpu:.0f} CPU ms; target ≥ 0.70",
        )
        compare.add_row(
            "throughput journey / floor",
            f"{100 * ratio:.1f} %",
            "journeys/s ÷ floor flows/s (floor = mean of before and after)",
        )
        compare.add_row(
            "ceiling from argon2 alone",
            f"{kdf_ceiling:.1f} journeys/s",
            f"{cpus} CPUs / argon2 CPU per journey = "
            f"{100 * kdf_ceiling / floor_rate:.0f} % of the floor",
        )
        compare.add_row(
            "ceiling from the CPU used",
            f"{cpu_ceiling:.1f} journeys/s",
            f"{cpus} CPUs / measured CPU per journey (floor: {floor_cpu:.0f} CPU ms per flow)",
        )
        tables.append(compare)
        for label, run, _ in floors:
            tables += floor_tables(f"engine floor reference ({label})", run, None)
        ctx.checks.append(
            Check(
                "journey",
                f"c={c} efficiency (floor CPU + argon2 CPU) ÷ journey CPU ≥ 0.70",
                f"({floor_cpu:.0f} + {kdf.per_journey_ms:.0f}) ÷ {journey_cpu:.0f} CPU ms = "
                f"{efficiency:.2f}",
                efficiency >= 0.70 if c == 20 else None,
                f"throughput {reference.per_second:.2f} journeys/s vs {floor_rate:.1f} floor "
                f"flows/s = {100 * ratio:.1f} %; argon2 alone caps at {kdf_ceiling:.1f}/s",
            )
        )
        ctx.results["journey_ratio"] = {
            "floor_flows_per_second": [run.flows_per_second for _, run, _ in floors],
            "journeys_per_second": reference.per_second,
            "ratio": ratio,
            "efficiency": efficiency,
            "cpu_ms": {"floor": floor_cpu, "argon2": kdf.per_journey_ms, "journey": journey_cpu},
        }
    for level in levels:
        tables.append(
            process_table(
                f"journey c={level.concurrency}", level.usage, ("journey", level.journeys)
            )
        )
    ctx.results["journey"] = levels
    ctx.printer.tables(tables)
    ctx.printer.tables(profiles)
    settings = {
        "journey": "register, login, enable, code from the SMTP sink (mail), login, code, "
        "activate, PIN — bench/client.py:journey",
        "levels (concurrency: journeys)": ", ".join(f"{c}: {n}" for c, n in sizes.journey_levels),
        "warm-up": f"{sizes.journey_warmup} journeys + 5 floor flows, not counted",
        "between phases": "a pause of TWOFA_AUTO_LOGOUT_SECONDS + 1 s, so earlier timers fire",
        "mail": "the bench reads new .eml files from the sink every 10 ms",
        "profile": "py-spy record --nonblocking --rate 100 on api and worker, during an extra "
        f"pass at c={sizes.journey_ratio_concurrency} after the measured levels"
        if ctx.profile
        else "off (--profile)",
        **ctx.common_settings(),
    }
    ctx.printer.tables([settings_table("journey", settings)])
