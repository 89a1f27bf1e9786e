"""Migrating PostgreSQL under the running release without a deadlock (README "Upgrading").

A migration alters tables one after another in one transaction. A transaction of the running
release that has read one table and then wants another the migration already altered would
wait for the migration while the migration waits for it, and PostgreSQL would abort one of
the two after ``deadlock_timeout``: the migration, or a user's request. So a migration first
locks every table in one ``LOCK`` statement, after which it waits for nobody, and that
statement gives up within half of ``deadlock_timeout``: before the server's check could pick
the user's transaction. ``migrate`` then tries again a moment later.
"""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

#: How long ``migrate`` keeps trying to lock the tables before it gives up.
PATIENCE_SECONDS = 120.0
#: What PostgreSQL says when a lock was not taken: statement timeout, lock timeout, deadlock.
_NOT_TAKEN = {"57014", "55P03", "40P01"}


class TablesBusy(RuntimeError):
    """The running release's transactions held a table each time the migration asked."""


def lock_every_table(connection: Connection) -> None:
    """Every table of the schema in ACCESS EXCLUSIVE mode until the migration commits."""
    tables = (
        connection.execute(
            text(
                "SELECT quote_ident(tablename) FROM pg_tables "
                "WHERE schemaname = current_schema() ORDER BY tablename"
            )
        )
        .scalars()
        .all()
    )
    if not tables:
        return
    deadlock_ms = connection.execute(
        text("SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'")
    ).scalar_one()
    previous = connection.execute(text("SELECT current_setting('statement_timeout')")).scalar_one()
    _set_statement_timeout(connection, f"{max(deadlock_ms // 2, 1)}ms")
    try:
        connection.exec_driver_sql(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
    except OperationalError as error:
        if getattr(error.orig, "sqlstate", None) in _NOT_TAKEN:
            raise TablesBusy("a transaction of the running release held a table") from error
        raise
    _set_statement_timeout(connection, previous)


def _set_statement_timeout(connection: Connection, value: str) -> None:
    """For this transaction only (``is_local``)."""
    connection.execute(text("SELECT set_config('statement_timeout', :v, true)"), {"v": value})
