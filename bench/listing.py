"""Listing: the dashboard's account page (``AdminService.accounts``) over many seeded accounts.

The accounts go into a database of their own in the run's data dir (migrated like the app's),
bulk-inserted with ``twofa seed``'s state mix; the query runs in the bench process, as in the
dashboard's process.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from bench.context import Context
from bench.report import Check, latency_cells, latency_columns, process_table, settings_table
from bench.seeding import account_rows, insert_accounts
from bench.stats import Summary, ms
from twofa.crypto import Keyring
from twofa.store.db import migrate
from twofa.wiring import services

PAGE_SIZE = 50
TARGET_MS = 50.0


@dataclass
class Case:
    name: str
    query: Callable[[random.Random, int], dict[str, Any]]


def cases(search: str) -> list[Case]:
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
        Case(f"search '{search}', page 1", first(search=search)),
        Case(f"search '{search}' + state=active, page 1", first(search=search, state="active")),
    ]


async def listing_bench(ctx: Context) -> None:
    sizes = ctx.sizes
    count = sizes.listing_accounts
    settings = ctx.stack.settings.model_copy(
        update={"database_url": f"sqlite:///{ctx.stack.data_dir / 'listing.db'}"}
    )
    url = settings.resolved_database_url
    keyring = Keyring(settings.pepper_bytes)
    ctx.note(f"listing: seeding {count:,} accounts in bulk")
    await asyncio.to_thread(migrate, url)
    password_hash = await asyncio.to_thread(keyring.hash_secret, "bench password")
    started = time.perf_counter()
    rows = account_rows(count, password_hash=password_hash, prefix="", rng=random.Random(7))
    await asyncio.to_thread(insert_accounts, url, rows)
    seeded = time.perf_counter() - started
    search = rows[len(rows) // 2]["email"][:3]
    rng = random.Random(11)
    results: list[tuple[Case, Summary, int, int]] = []
    async with services(settings, client=ctx.client) as built:
        admin = built.admin
        with ctx.monitor() as monitor:
            for case in cases(search):
                first = await admin.accounts(page_size=PAGE_SIZE, **case.query(rng, 1))
                pages = max((first.total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
                took = []
                for _ in range(sizes.listing_samples):
                    query = case.query(rng, pages)
                    start = time.perf_counter()
                    page = await admin.accounts(page_size=PAGE_SIZE, **query)
                    took.append(time.perf_counter() - start)
                    assert page.rows or page.total == 0
                results.append((case, ms(took), first.total, pages))
        assert monitor.usage is not None

    table = Table(
        title=f"listing — AdminService.accounts, {count:,} accounts, {PAGE_SIZE} per page",
        title_justify="left",
    )
    table.add_column("query")
    table.add_column("matching", justify="right")
    table.add_column("pages", justify="right")
    latency_columns(table)
    table.add_column(f"p50 ≤ {TARGET_MS:.0f} ms", justify="center")
    for case, summary, total, pages in results:
        ok = summary.p50 <= TARGET_MS
        table.add_row(
            case.name,
            f"{total:,}",
            f"{pages:,}",
            *latency_cells(summary),
            "[green]yes[/]" if ok else "[red]no[/]",
        )
    table.caption = (
        f"{sizes.listing_samples} calls per query after one warm call; each call counts the "
        f"matches and reads one page (OFFSET paging); seeded in {seeded:.1f} s"
    )
    worst = max(results, key=lambda r: r[1].p50)
    ctx.checks.append(
        Check(
            "listing",
            f"account page p50 ≤ {TARGET_MS:.0f} ms at {count:,} accounts",
            f"worst p50 {worst[1].p50:.1f} ms ({worst[0].name}); "
            f"page 1 p50 {results[0][1].p50:.1f} ms",
            all(r[1].p50 <= TARGET_MS for r in results),
            "a sort SQLite cannot read from an index: ORDER BY <column>, id needs an index on "
            "(column, id) in that order and direction, else every page sorts all the matches",
        )
    )
    ctx.results["listing"] = {case.name: summary for case, summary, _, _ in results}
    ctx.printer.tables([table, process_table("listing", monitor.usage)])
    ctx.printer.tables(
        [
            settings_table(
                "listing",
                {
                    "accounts": f"{count:,}, twofa seed's state mix, created over 30 days",
                    "database": "its own SQLite file in the run's data dir, migrated to head",
                    "seeding": "SQLAlchemy core insert, 5,000 rows per batch",
                    "query": "AdminService.accounts(search, state, sort, page, page_size=50) "
                    "in the bench process (as the dashboard calls it)",
                    "search": f"prefix '{search}' (taken from a seeded email)",
                    **ctx.common_settings(),
                },
            )
        ]
    )
