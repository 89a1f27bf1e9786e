"""Listing and overview: the dashboard's reads (``AdminService.accounts`` and ``.overview``)
over a million seeded accounts and their audit records, on SQLite and on PostgreSQL.

Each backend gets a database of its own, migrated like the app's: a SQLite file in the run's
data dir, and a throwaway PostgreSQL server from Debian's packages (tests/support/postgres.py), when
installed. The rows are generated inside the database (bench/seeding.py); the queries run in
the bench process, as in the dashboard's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from bench.context import Context
from bench.report import Check, latency_cells, latency_columns, process_table, settings_table
from bench.seeding import Population, seed_population
from bench.stats import Summary, ms
from twofa.admin import AdminService
from twofa.crypto import Keyring
from twofa.service import TwoFactorService
from twofa.store.db import Database, migrate
from twofa.views import AccountPage

PAGE_SIZE = 50
TARGET_MS = 50.0
OVERVIEW_TARGET_MS = 300.0
#: A prefix matching ~1/26 of the seeded emails (tens of thousands at 1M), and one ~1/17,576.
BROAD, NARROW = "k", "kam"


@dataclass
class Case:
    name: str
    query: Callable[[random.Random, int], dict[str, Any]]


def cases() -> list[Case]:
    def first(**kw: Any) -> Callable[[random.Random, int], dict[str, Any]]:
        return lambda rng, pages: {"page": 1, **kw}

    def anywhere(**kw: Any) -> Callable[[random.Random, int], dict[str, Any]]:
        return lambda rng, pages: {"page": rng.randint(1, max(pages, 1)), **kw}

    return [
        Case("all, by email, page 1", first()),
        Case("all, by email, random page", anywhere()),
        Case("all, newest first, page 1", first(sort="created_at", descending=True)),
        Case("all, newest first, random page", anywhere(sort="created_at", descending=True)),
        Case("all, by updated, random page", anywhere(sort="updated_at")),
        Case("state=active, by email, page 1", first(state="active")),
        Case("state=active, by email, random page", anywhere(state="active")),
        Case("state=locked, by email, page 1", first(state="locked")),
        Case(f"search '{BROAD}', page 1", first(search=BROAD)),
        Case(f"search '{BROAD}', random page", anywhere(search=BROAD)),
        Case(f"search '{NARROW}', page 1", first(search=NARROW)),
        Case(f"search '{BROAD}' + state=active, page 1", first(search=BROAD, state="active")),
    ]


@dataclass
class Measured:
    backend: str
    population: Population
    listing: list[tuple[Case, Summary, AccountPage]]
    overview: Summary


@contextlib.contextmanager
def _databases(ctx: Context) -> Iterator[list[tuple[str, str]]]:
    """(backend, URL) for each backend of this run; PostgreSQL only where it is installed."""
    chosen = ctx.sizes.listing_backends.split(",")
    found = [("SQLite", f"sqlite:///{ctx.stack.data_dir / 'listing.db'}")] * ("sqlite" in chosen)
    with contextlib.ExitStack() as stack:
        if "postgresql" in chosen:
            url = stack.enter_context(ctx.throwaway_postgresql("listing"))
            found += [("PostgreSQL", url)] if url else []
        yield found


async def _timed(samples: int, call: Callable[[], Awaitable[Any]]) -> Summary:
    took = []
    for _ in range(samples):
        start = time.perf_counter()
        await call()
        took.append(time.perf_counter() - start)
    return ms(took)


async def _measure(ctx: Context, backend: str, url: str) -> Measured:
    sizes = ctx.sizes
    settings = ctx.stack.settings.model_copy(update={"database_url": url})
    keyring = Keyring(settings.pepper_bytes)
    password_hash = await asyncio.to_thread(keyring.hash_secret, "bench password")
    await asyncio.to_thread(migrate, url)
    ctx.note(f"listing: seeding {sizes.listing_accounts:,} accounts on {backend}")
    population = await asyncio.to_thread(
        seed_population, url, sizes.listing_accounts, password_hash=password_hash
    )
    ctx.note(
        f"listing: {backend} seeded in {population.seconds:.1f} s "
        f"({population.accounts:,} accounts, {population.audit_records:,} audit records)"
    )
    db = Database(url)
    admin = AdminService(TwoFactorService(settings, db, ctx.client))
    rng = random.Random(11)
    listing = []
    try:
        for case in cases():
            first = await admin.accounts(page_size=PAGE_SIZE, **case.query(rng, 1))

            async def call(case: Case = case, pages: int = first.pages) -> None:
                page = await admin.accounts(page_size=PAGE_SIZE, **case.query(rng, pages))
                assert page.rows or page.total == 0

            listing.append((case, await _timed(sizes.listing_samples, call), first))
        await admin.overview()
        overview = await _timed(sizes.listing_samples, admin.overview)
    finally:
        await db.dispose()
    return Measured(backend, population, listing, overview)


def _matching(page: AccountPage) -> str:
    return f"{page.total:,}" if page.total_is_exact else f"> {page.total:,}"


async def listing_bench(ctx: Context) -> None:
    sizes = ctx.sizes
    count = sizes.listing_accounts
    measured: list[Measured] = []
    with ctx.monitor() as monitor, _databases(ctx) as databases:
        for backend, url in databases:
            measured.append(await _measure(ctx, backend, url))
    assert monitor.usage is not None

    tables = []
    for run in measured:
        table = Table(
            title=f"listing — AdminService.accounts, {count:,} accounts, {run.backend}, "
            f"{PAGE_SIZE} per page",
            title_justify="left",
        )
        table.add_column("query")
        table.add_column("matching", justify="right")
        table.add_column("pages", justify="right")
        latency_columns(table)
        table.add_column(f"p50 ≤ {TARGET_MS:.0f} ms", justify="center")
        for case, summary, first in run.listing:
            table.add_row(
                case.name,
                _matching(first),
                f"{first.pages:,}",
                *latency_cells(summary),
                "[green]yes[/]" if summary.p50 <= TARGET_MS else "[red]no[/]",
            )
        table.caption = (
            f"{sizes.listing_samples} calls per query after one warm call; each call counts the "
            "matches (a tally, or a search up to 10,000) and reads one page; pages reach the "
            f"first 10,000 matches; seeded in {run.population.seconds:.1f} s"
        )
        overview = Table(
            title=f"overview — AdminService.overview, {count:,} accounts, "
            f"{run.population.audit_records:,} audit records, {run.backend}",
            title_justify="left",
        )
        overview.add_column("call")
        latency_columns(overview)
        overview.add_column(f"p50 ≤ {OVERVIEW_TARGET_MS:.0f} ms", justify="center")
        overview.add_row(
            "states, funnel, 30 days of events, locked accounts",
            *latency_cells(run.overview),
            "[green]yes[/]" if run.overview.p50 <= OVERVIEW_TARGET_MS else "[red]no[/]",
        )
        tables += [table, overview]
        worst = max(run.listing, key=lambda r: r[1].p50)
        ctx.checks.append(
            Check(
                "listing",
                f"account listing and search p50 ≤ {TARGET_MS:.0f} ms at {count:,} accounts "
                f"({run.backend})",
                f"worst p50 {worst[1].p50:.1f} ms ({worst[0].name}); "
                f"page 1 p50 {run.listing[0][1].p50:.1f} ms",
                all(r[1].p50 <= TARGET_MS for r in run.listing),
                "an ORDER BY no index serves in that order and direction sorts every match; "
                "an exact count over a million rows walks them all",
            )
        )
        ctx.checks.append(
            Check(
                "overview",
                f"overview p50 ≤ {OVERVIEW_TARGET_MS:.0f} ms at {count:,} accounts ({run.backend})",
                f"p50 {run.overview.p50:.1f} ms",
                run.overview.p50 <= OVERVIEW_TARGET_MS,
                "the tallies' triggers (migration 0011); without them, counts over every row",
            )
        )
        ctx.results[f"listing {run.backend}"] = {c.name: s for c, s, _ in run.listing}
        ctx.results[f"overview {run.backend}"] = run.overview
        ctx.results[f"seeding {run.backend}"] = run.population
    ctx.printer.tables([*tables, process_table("listing", monitor.usage)])
    ctx.printer.tables(
        [
            settings_table(
                "listing",
                {
                    "accounts": f"{count:,}, twofa seed's state mix, created over 30 days, "
                    "with the audit records of their pasts",
                    "databases": ", ".join(r.backend for r in measured)
                    + " (each its own, migrated to head; PostgreSQL a throwaway server with "
                    "tests/support/postgres.py's flags, vacuumed after the load)",
                    "seeding": "generated in the database in one transaction, triggers off, "
                    "indexes built after, tallies counted once; "
                    + ", ".join(f"{r.backend} {r.population.seconds:.1f} s" for r in measured),
                    "query": "AdminService.accounts(search, state, sort, page, page_size=50) "
                    "and AdminService.overview() in the bench process (as the dashboard calls)",
                    "search": f"prefixes '{BROAD}' (~1/26 of the emails) and '{NARROW}'",
                    **ctx.common_settings(),
                },
            )
        ]
    )
