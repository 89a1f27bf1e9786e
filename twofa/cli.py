"""The ``twofa`` command: the embedded system, its parts one by one, and operator tools."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import typer
import uvicorn

from twofa.config import Settings

if TYPE_CHECKING:
    from twofa import pepper

T = TypeVar("T")

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
    from twofa.temporal import exit_without_teardown, run_worker

    _logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(Settings()))
    exit_without_teardown()


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
    from twofa.store.migration_locks import TablesBusy

    try:
        run_migrations(Settings().resolved_database_url)
    except TablesBusy as error:
        typer.echo(f"not migrated: {error}", err=True)
        raise typer.Exit(1) from None


audit_app = typer.Typer(help="The hash-chained audit log (docs/rules.md S5).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify() -> None:
    """Exit 0 when the chain is intact up to its anchor; exit 1 naming the first bad record;
    exit 2 when it could not be checked, so a monitor tells an outage from tampering."""
    from sqlalchemy.exc import SQLAlchemyError

    from twofa import audit
    from twofa.crypto import Keyring
    from twofa.store.db import Database

    settings = Settings()
    if not settings.pepper and not (settings.data_dir / "pepper").exists():
        typer.echo(
            f"audit chain NOT CHECKED: no pepper in {settings.data_dir} nor TWOFA_PEPPER: the "
            "audit key derives from it",
            err=True,
        )
        raise typer.Exit(2)
    chain = audit.chain_for(settings, Keyring.of(settings))

    async def check() -> audit.Verdict:
        db = Database(settings.resolved_database_url)
        try:
            async with db.read() as session:
                return await audit.verify(session, chain)
        finally:
            await db.dispose()

    try:
        verdict = asyncio.run(check())
    except (OSError, SQLAlchemyError) as error:
        cause = getattr(error, "orig", None) or error  # the driver's words, not the SQL
        typer.echo(f"audit chain NOT CHECKED: {type(cause).__name__}: {cause}", err=True)
        raise typer.Exit(2) from None
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


pepper_app = typer.Typer(
    help="The pepper keyring: rotate it, and see what is left on each pepper.",
    no_args_is_help=True,
)
app.add_typer(pepper_app, name="pepper")


async def _pepper_report(settings: Settings) -> pepper.Report:
    from twofa import audit
    from twofa import pepper as peppers
    from twofa.crypto import Keyring
    from twofa.store.db import Database

    keyring = Keyring.of(settings)
    db = Database(settings.resolved_database_url)
    try:
        async with db.read() as session:
            return await peppers.report(session, keyring, audit.chain_for(settings, keyring))
    finally:
        await db.dispose()


async def _pepper_write(settings: Settings, event: str | None, **details: Any) -> None:
    """Tags the rows made before pepper ids, and audits ``event``, under the current keyring."""
    from twofa import audit
    from twofa.crypto import Keyring
    from twofa.store import pepper_queries
    from twofa.store.db import Database

    keyring = Keyring.of(settings)
    db = Database(settings.resolved_database_url, audit=audit.chain_for(settings, keyring))
    try:
        async with db.write() as session:
            if not keyring.previous:  # then they can only have been made under this pepper
                await pepper_queries.tag_untagged(session, keyring.id)
            if event is not None:
                await audit.append(session, event, actor="cli", **details)
    finally:
        await db.dispose()


def _print_report(report: pepper.Report) -> None:
    for line in report.lines():
        typer.echo(line)


@pepper_app.command("status")
def pepper_status() -> None:
    """What is left on each pepper; exit 1 if the store needs a pepper the keyring lacks."""
    from twofa.store.db import migrate as run_migrations

    settings = Settings()
    run_migrations(settings.resolved_database_url)
    report = asyncio.run(_pepper_report(settings))
    _print_report(report)
    if report.unknown:
        typer.echo(
            f"peppers dropped too early: {', '.join(report.unknown)}; what was made under them "
            "can no longer be read",
            err=True,
        )
        raise typer.Exit(1)


@pepper_app.command("rotate")
def pepper_rotate() -> None:
    """A new current pepper; the old one stays as previous. Stop every process first."""
    from twofa.crypto import Keyring
    from twofa.pepper import rotate_files
    from twofa.store.db import migrate as run_migrations

    settings = Settings()
    run_migrations(settings.resolved_database_url)
    asyncio.run(_pepper_write(settings, None))
    if settings.pepper:
        typer.echo(
            f"TWOFA_PEPPER (pepper {Keyring(settings.pepper_bytes).id}) comes from the "
            "environment, which this command cannot change. Put its value first in "
            "TWOFA_PEPPER_PREVIOUS (comma-separated, newest first), a new random value in "
            "TWOFA_PEPPER (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
            "then start every process again. `twofa pepper status` shows what is left on it."
        )
        return
    old, new = rotate_files(settings)
    fresh = Settings()  # reads the files just written
    asyncio.run(_pepper_write(fresh, "pepper_rotated", previous=old, current=new))
    typer.echo(f"pepper {new} is current now; {old} is kept as previous.")
    _print_report(asyncio.run(_pepper_report(fresh)))
    typer.echo("Start every process again: they read the keyring when they start.")


@pepper_app.command("drop")
def pepper_drop(
    pepper_id: str = typer.Argument(..., help="the id of the oldest previous pepper"),
    force: bool = typer.Option(False, help="drop it although secrets are still made under it"),
) -> None:
    """Take the oldest previous pepper out of the keyring once nothing needs it any more.

    Its audit key (not the pepper) is kept in the data dir, so verify still checks the records
    written under it.
    """
    from twofa.crypto import Keyring
    from twofa.pepper import drop_files
    from twofa.store.db import migrate as run_migrations

    settings = Settings()
    run_migrations(settings.resolved_database_url)
    keyring = Keyring.of(settings)
    if not keyring.previous or keyring.previous[-1].id != pepper_id:
        oldest = keyring.previous[-1].id if keyring.previous else "none"
        typer.echo(f"refused: only the oldest previous pepper ({oldest}) can be dropped", err=True)
        raise typer.Exit(1)
    report = asyncio.run(_pepper_report(settings))
    if report.left(pepper_id) and not force:
        typer.echo(
            f"refused: pepper {pepper_id} still has {report.left(pepper_id)} secret(s) made "
            "under it (see `twofa pepper status`); --force drops it anyway, and locks them out",
            err=True,
        )
        raise typer.Exit(1)
    in_file = drop_files(settings, keyring, pepper_id)
    asyncio.run(_pepper_write(settings, "pepper_dropped", pepper=pepper_id))
    if in_file:
        typer.echo(f"pepper {pepper_id} dropped; its audit key is kept for `twofa audit verify`.")
    else:
        typer.echo(
            f"pepper {pepper_id}'s audit key is kept for `twofa audit verify`; now take its "
            "value out of TWOFA_PEPPER_PREVIOUS and start every process again."
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
    from twofa.temporal import exit_without_teardown
    from twofa.wiring import services

    password = _new_password()

    async def create() -> None:
        async with services(Settings(), migrated=True) as built:
            await built.admin.create_operator(email, role, password)

    _refused_exits(create)
    typer.echo(f"{role} {email} created")
    exit_without_teardown()


user_app = typer.Typer(help="End users, to try the pages with.", no_args_is_help=True)
app.add_typer(user_app, name="user")


@user_app.command("create")
def user_create(email: str = typer.Option(..., help="the user's email")) -> None:
    """Register an end user as POST /v1/accounts does, and print the account as it answers;
    the password is prompted, or read from stdin when piped."""
    from twofa.temporal import exit_without_teardown
    from twofa.views import AccountView
    from twofa.wiring import services

    password = _new_password()

    async def create() -> AccountView:
        async with services(Settings(), migrated=True) as built:
            return await built.users.register(email, password)

    typer.echo(_refused_exits(create).model_dump_json())
    exit_without_teardown()


def _new_password() -> str:
    """Prompted twice on a terminal; else the first line of stdin, so it stays out of ``ps``."""
    if sys.stdin.isatty():
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    return sys.stdin.readline().rstrip("\n")


def _refused_exits(step: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Runs ``step``; a refusal (a rule, a taken email) is one line on stderr and exit 1."""
    from twofa.errors import ServiceError
    from twofa.temporal import exit_without_teardown

    try:
        return asyncio.run(step())
    except ServiceError as error:
        typer.echo(f"refused: {error.message}", err=True)
        exit_without_teardown(1)


@app.command()
def seed(accounts: int = typer.Option(200, min=1, help="how many demo accounts")) -> None:
    """Demo data: accounts in every 2FA state, with real workflows (Temporal must be up)."""
    from rich.progress import Progress

    from twofa.seed import DEMO_PASSWORD, DEMO_PIN
    from twofa.seed import seed as run_seed
    from twofa.temporal import exit_without_teardown
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
    exit_without_teardown()
