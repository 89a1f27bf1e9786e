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
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def up() -> None:
    """Start everything on loopback: Temporal dev server, SMTP sink, worker and API."""
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
    settings = Settings()
    _logging()
    uvicorn.run(
        "twofa.api:create_app",
        factory=True,
        host=settings.host,
        port=settings.api_port,
        workers=workers,
        log_level="info",
    )


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
    """Exit 0 when the chain is intact; exit 1 naming the first bad record."""
    from twofa import audit
    from twofa.store.db import Database

    async def check() -> tuple[int, audit.Break | None]:
        db = Database(Settings().resolved_database_url)
        try:
            async with db.read() as session:
                return await audit.verify(session)
        finally:
            await db.dispose()

    count, broken = asyncio.run(check())
    if broken is not None:
        typer.echo(
            f"audit chain BROKEN at record {broken.seq}: {broken.reason} "
            f"({count} records before it hold)",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"audit chain intact: {count} records")
