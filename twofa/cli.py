"""The ``twofa`` command: the embedded system, its parts one by one, and operator tools."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading

import typer
import uvicorn

from twofa.config import Settings

app = typer.Typer(
    help="Cockpit 2FA: two-factor authentication engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _logging() -> None:
    from twofa.observability import configure_logging

    configure_logging(Settings().log_format)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per plugin at every start


@app.command()
def up() -> None:
    """Start everything on loopback: Temporal dev server, SMTP sink, worker, API and dashboard."""
    from twofa.devstack import up as run_up

    raise typer.Exit(run_up(Settings()))


@app.command()
def worker() -> None:
    """Run the Temporal worker (workflows and activities)."""
    from twofa.temporal import run_worker

    _logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(Settings()))


@app.command()
def api(workers: int = typer.Option(1, help="uvicorn worker processes")) -> None:
    """Run the HTTP API (uvicorn)."""
    from twofa.observability import UVICORN_LIMITS

    settings = Settings()
    _logging()
    uvicorn.run(
        "twofa.api:create_app",
        factory=True,
        host=settings.host,
        port=settings.api_port,
        workers=workers,
        log_level="info",
        log_config=None,  # uvicorn's records, access lines included, go through ours
        **UVICORN_LIMITS,
    )


@app.command()
def dashboard() -> None:
    """Run the Streamlit dashboard for admins and auditors (replaces this process)."""
    import os
    import sys
    from pathlib import Path

    from twofa.devstack import DASHBOARD_LIMITS
    from twofa.store.db import migrate as run_migrations

    settings = Settings()
    run_migrations(settings.resolved_database_url)
    script = Path(__file__).parent / "dashboard" / "server.py"  # app.py and its cookie route
    args = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.address", settings.host,
        "--server.port", str(settings.dashboard_port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        *DASHBOARD_LIMITS,
    ]  # fmt: skip
    os.environ.setdefault("STREAMLIT_CLIENT_TOOLBAR_MODE", "viewer")  # no developer menu
    sys.stdout.flush()
    os.execv(sys.executable, args)  # exec: signals from `twofa up` reach streamlit itself


@app.command("smtp-sink")
def smtp_sink() -> None:
    """Run the SMTP sink that keeps each mail as an .eml file under <data dir>/mail/."""
    from twofa.devstack import start_smtp_sink

    settings = Settings()
    controller = start_smtp_sink(settings.mail_dir, settings.smtp_host, settings.smtp_port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    controller.stop()


@app.command()
def migrate() -> None:
    """Bring the database schema to the newest revision."""
    from twofa.store.db import migrate as run_migrations

    run_migrations(Settings().resolved_database_url)


audit_app = typer.Typer(help="The hash-chained audit log (SPEC S5).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify() -> None:
    """Exit 0 when the chain is intact up to its anchor; exit 1 naming the first bad record."""
    from twofa import audit
    from twofa.crypto import Keyring
    from twofa.store.db import Database

    settings = Settings()
    if not settings.pepper and not (settings.data_dir / "pepper").exists():
        typer.echo(
            f"no pepper in {settings.data_dir} nor TWOFA_PEPPER: the audit key derives from it",
            err=True,
        )
        raise typer.Exit(1)
    chain = audit.chain_for(settings, Keyring(settings.pepper_bytes))

    async def check() -> audit.Verdict:
        db = Database(settings.resolved_database_url)
        try:
            async with db.read() as session:
                return await audit.verify(session, chain)
        finally:
            await db.dispose()

    verdict = asyncio.run(check())
    if verdict.broken is not None:
        where = "" if verdict.broken.seq is None else f" at record {verdict.broken.seq}"
        typer.echo(
            f"audit chain BROKEN{where}: {verdict.broken.reason} "
            f"({verdict.count} records before it hold)",
            err=True,
        )
        raise typer.Exit(1)
    unkeyed = verdict.count - verdict.keyed
    proof = (
        f"anchored at record {verdict.anchor.seq} in {chain.anchor_path}"
        if verdict.anchor
        else "not anchored: no keyed record yet, so a cut-off end would not show"
    )
    typer.echo(
        f"audit chain intact: {verdict.count} records ({verdict.keyed} keyed, "
        f"{unkeyed} unkeyed from before the key); {proof}"
    )


admin_app = typer.Typer(
    help="Dashboard operators: admins act, auditors read.", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")


@admin_app.command("create")
def admin_create(
    email: str = typer.Option(..., help="the operator's email"),
    role: str = typer.Option(..., help="admin or auditor"),
) -> None:
    """Create a dashboard operator; the password is prompted, or read from stdin when piped."""
    import sys

    from twofa.errors import ServiceError
    from twofa.wiring import services

    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")

    async def create() -> None:
        async with services(Settings(), migrated=True) as built:
            await built.admin.create_operator(email, role, password)  # type: ignore[arg-type]

    try:
        asyncio.run(create())
    except ServiceError as error:
        typer.echo(f"refused: {error.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{role} {email} created")


@app.command()
def seed(accounts: int = typer.Option(200, min=1, help="how many demo accounts")) -> None:
    """Demo data: accounts in every 2FA state, with real workflows (Temporal must be up)."""
    from rich.progress import Progress

    from twofa.seed import DEMO_PASSWORD, DEMO_PIN
    from twofa.seed import seed as run_seed
    from twofa.wiring import services

    async def go() -> dict[str, int]:
        async with services(Settings(), migrated=True) as built:
            users = built.users
            with Progress() as progress:
                task = progress.add_task("Seeding accounts", total=accounts)
                return await run_seed(
                    users.db,
                    users.client,
                    users.keyring,
                    users.policy,
                    users.settings.temporal_task_queue,
                    accounts,
                    advance=lambda n: progress.advance(task, n),
                )

    tally = asyncio.run(go())
    typer.echo(", ".join(f"{state}: {n}" for state, n in tally.items()))
    typer.echo(f"every seeded account's password is {DEMO_PASSWORD!r}, its PIN {DEMO_PIN!r}")
