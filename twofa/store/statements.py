"""What the query modules share: statements built once for the hot path of a login (Core
statements on the tables, with bound parameters, so a call only binds its values), the rows
they read as transient models, and the count of rows a write changed.

Through the ORM each statement was built anew on every call, its cache key computed, its
update synchronized with the session and its inserts flushed by the unit of work: more Python
than SQL around the two argon2 runs of a login. Rows read this way come back as transient model
objects, which the service reads and never writes back through a session.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Result, Row, Select, Table, select

from twofa.store.models import Account

M = TypeVar("M")


def table_of(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def with_its_account(model: type[Any], prefix: str) -> Select[Any]:
    """A row of ``model``'s table joined to its account, in one SELECT: the account's columns
    by their names, the row's labelled ``prefix`` + name (read back with ``as_model``)."""
    table, accounts = table_of(model), table_of(Account)
    return select(accounts, *[c.label(f"{prefix}{c.name}") for c in table.c]).select_from(
        table.join(accounts, accounts.c.id == table.c.account_id)
    )


def as_model(model: type[M], row: Row[Any], prefix: str = "") -> M:
    """A transient model object from a row's columns (``prefix``: their labels' prefix)."""
    values = row._mapping
    return model(**{c.key: values[f"{prefix}{c.name}"] for c in table_of(model).c})


def column_values(instance: Any) -> dict[str, Any]:
    """A new model object's columns, for a Core insert (no unit of work, no flush)."""
    return {c.name: getattr(instance, c.key) for c in table_of(type(instance)).c}


def rows_changed(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched: a session's ``execute`` is typed as returning a
    plain ``Result``, but for these statements it is a ``CursorResult``, which counts them."""
    return cast(CursorResult[Any], result).rowcount
