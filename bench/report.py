"""Rich tables for the bench: latency summaries, processes, settings, and the targets."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.monitor import MIB, Usage
from bench.stats import Summary


@dataclass
class Check:
    """One target of issue 5, measured in this run."""

    benchmark: str
    target: str
    measured: str
    ok: bool | None
    bound: str = ""


def num(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def mib(value: int) -> str:
    return f"{value / MIB:,.0f}"


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "[yellow]n/a[/]"
    return "[green]meets[/]" if ok else "[red]misses[/]"


def latency_columns(table: Table, unit: str = "ms") -> None:
    for name in ("p50", "p95", "p99", "max"):
        table.add_column(f"{name} {unit}", justify="right")


def latency_cells(summary: Summary, digits: int = 1) -> list[str]:
    return [num(value, digits) for value in (summary.p50, summary.p95, summary.p99, summary.max)]


def settings_table(title: str, settings: dict[str, Any]) -> Table:
    table = Table(title=f"{title} — settings", title_justify="left", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in settings.items():
        table.add_row(key, str(value))
    return table


def process_table(title: str, usage: Usage, per: tuple[str, int] | None = None) -> Table:
    """Peak RSS and CPU of every process, and the CPU the rest of the machine took meanwhile."""
    table = Table(title=f"{title} — processes", title_justify="left")
    table.add_column("process")
    table.add_column("pid", justify="right")
    table.add_column("RSS start MiB", justify="right")
    table.add_column("RSS peak MiB", justify="right")
    table.add_column("RSS end MiB", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column("CPU % of 1 core", justify="right")
    if per:
        table.add_column(f"CPU ms per {per[0]}", justify="right")
    wall = usage.wall_seconds or 1.0
    for p in usage.processes:
        cells = [
            p.name,
            str(p.pid),
            mib(p.rss_start),
            mib(p.rss_peak) + ("" if p.hwm_reset else "*"),
            mib(p.rss_end),
            num(p.cpu_seconds, 2),
            num(100 * p.cpu_seconds / wall, 0),
        ]
        if per:
            cells.append(num(1000 * p.cpu_seconds / max(per[1], 1), 1))
        table.add_row(*cells)
    foreign = [
        "(other processes on the machine)",
        "",
        "",
        "",
        "",
        num(usage.foreign_cpu_seconds, 2),
        num(100 * usage.foreign_cpu_seconds / wall, 0),
    ]
    if per:
        foreign.append("")
    table.add_row(*foreign, style="dim")
    table.caption = (
        f"wall {usage.wall_seconds:.1f} s on {usage.cpus} CPUs; load average "
        f"{usage.load_start[0]:.2f} → {usage.load_end[0]:.2f}; peak = kernel VmHWM since the "
        "benchmark began (* = sampled every 100 ms)"
    )
    return table


def checks_table(checks: Sequence[Check]) -> Table:
    table = Table(title="targets (issue 5) — measured in this run", title_justify="left")
    table.add_column("benchmark")
    table.add_column("target")
    table.add_column("measured")
    table.add_column("verdict")
    table.add_column("what bounds it", overflow="fold")
    for check in checks:
        table.add_row(check.benchmark, check.target, check.measured, verdict(check.ok), check.bound)
    return table


class Printer:
    """Prints tables as each benchmark ends, so a long run shows its figures as it goes."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def tables(self, tables: Iterable[Table]) -> None:
        for table in tables:
            self.console.print(table)
            self.console.print()

    def note(self, text: str) -> None:
        self.console.log(text)

    def verbatim(self, text: str) -> None:
        """Text as it is: brackets in a log line are not Rich markup."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
