"""``python -m bench``: start a private stack, run the benchmarks, print their tables."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console

from bench.client import ApiClient, MailWatcher
from bench.context import Context, Sizes
from bench.report import Printer, checks_table
from bench.stack import Stack

Benchmark = Callable[[Context], Awaitable[None]]


def benchmarks() -> dict[str, Benchmark]:
    from bench.autologout import auto_logout_bench
    from bench.engine import engine_floor
    from bench.journey import journey_bench
    from bench.listing import listing_bench
    from bench.login import login_bench
    from bench.memory import memory_bench
    from bench.recovery import recovery_bench

    return {
        "floor": engine_floor,
        "journey": journey_bench,
        "login": login_bench,
        "auto-logout": auto_logout_bench,
        "listing": listing_bench,
        "memory": memory_bench,
        "recovery": recovery_bench,
    }


def parse(argv: list[str]) -> argparse.Namespace:
    names = list(benchmarks())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Cockpit 2FA benchmarks against the engine floor, on a private stack.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke sizes (well under a minute)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these (repeat or comma-separate): {', '.join(names)}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the API and worker during an extra journey pass at c=20",
    )
    parser.add_argument(
        "--auto-logout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="TWOFA_AUTO_LOGOUT_SECONDS of the stack (default 5)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SIZE=VALUE",
        help="override a size, e.g. --set journey_levels=20:100 --set floor_flows=150 "
        "(fields of bench.context.Sizes)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the run's data dir and logs")
    args = parser.parse_args(argv)
    chosen = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    args.selected = [n for n in names if not chosen or n in chosen]
    return args


async def run(args: argparse.Namespace, console: Console) -> Context:
    printer = Printer(console)
    stack = Stack.create(auto_logout_seconds=args.auto_logout, keep=args.keep)
    printer.note(f"starting a private stack in {stack.data_dir}")
    try:
        client = await stack.start()
        api = ApiClient(stack.api_url, stack.settings.resolved_service_token)
        try:
            async with MailWatcher(stack.settings.mail_dir) as mails:
                ctx = Context(
                    stack=stack,
                    client=client,
                    api=api,
                    mails=mails,
                    sizes=(Sizes.quick() if args.quick else Sizes()).with_overrides(args.set),
                    quick=args.quick,
                    printer=printer,
                    profile=args.profile,
                )
                registry = benchmarks()
                for name in args.selected:
                    started = time.perf_counter()
                    console.rule(f"[bold]{name}")
                    await registry[name](ctx)
                    printer.note(f"{name}: done in {time.perf_counter() - started:.0f} s")
                return ctx
        except BaseException:
            printer.verbatim(stack.log_tails())
            raise
        finally:
            await api.close()
    finally:
        await stack.stop()
        if args.keep:
            printer.note(f"data dir and logs kept in {stack.data_dir}")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    console = Console(width=None if sys.stdout.isatty() else 180, log_path=False)
    started = time.perf_counter()
    ctx = asyncio.run(run(args, console))
    console.rule("[bold]summary")
    console.print(checks_table(ctx.checks))
    console.log(f"bench finished in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(ctx.dump())
    return 0
