"""Engine, transactions and migrations for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import random
import time
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, registry, sqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import EMPTY_DICT

from twofa.audit import CHAIN_INFO, HEAD_INFO, Chain
from twofa.config import private_dir
from twofa.store.migration_locks import PATIENCE_SECONDS, TablesBusy

try:  # a current SQLite, on the platforms its wheel is built for (see WAL_IS_SAFE)
    from pysqlite3 import dbapi2 as sqlite3
except ImportError:  # elsewhere the system's library, with a rollback journal if it is old
    import sqlite3

T = TypeVar("T")
log = logging.getLogger(__name__)
_ASYNC_DRIVERS = {"sqlite": "sqlite+twofa_aiosqlite", "postgresql": "postgresql+asyncpg"}
_SYNC_DRIVERS = {"sqlite": "sqlite+twofa_pysqlite", "postgresql": "postgresql+psycopg"}


def _aiosqlite_on_pysqlite3() -> types.ModuleType:
    """aiosqlite's API over the pysqlite3 wheel's SQLite, errors included, for SQLAlchemy."""
    module = types.ModuleType("aiosqlite_pysqlite3")
    for name in dir(aiosqlite):
        if not name.startswith("_"):
            setattr(module, name, getattr(aiosqlite, name))
    for name in (
        "DatabaseError",
        "Error",
        "IntegrityError",
        "NotSupportedError",
        "OperationalError",
        "ProgrammingError",
        "Warning",
        "sqlite_version",
        "sqlite_version_info",
    ):
        setattr(module, name, getattr(sqlite3, name))

    def connect(database: str, **kwargs: Any) -> aiosqlite.Connection:
        # used from the loop's thread too, never at once (see _OneTripConnection)
        kwargs["check_same_thread"] = False
        return aiosqlite.Connection(lambda: sqlite3.connect(database, **kwargs), 64)

    module.connect = connect  # type: ignore[attr-defined]
    return module


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A statement in one trip to the connection's thread (cursor, execute, fetch, close),
    where aiosqlite's cursor makes four; none inside a write transaction on WAL, nor for its
    ``BEGIN IMMEDIATE`` if no other writer holds the lock, nor for a read's ``BEGIN`` (see
    _OneTripConnection)."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    async def _run(self, method: str, operation: Any, parameters: Any) -> None:
        connection = self._connection

        def trip() -> tuple[Any, int, int | None, list[Any]]:
            cursor = connection._conn.cursor()
            try:
                getattr(cursor, method)(operation, parameters)
                rows = cursor.fetchall() if cursor.description else []
                return cursor.description, cursor.rowcount, cursor.lastrowid, rows
            finally:
                cursor.close()

        adapted: _OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        begins_write = adapted.in_wal and operation == BEGIN_WRITE
        if adapted.writing or operation == BEGIN_READ:
            found = trip()
        elif begins_write and (at_once := adapted.unless_busy(trip)) is not None:
            found, adapted.writing = at_once, True
        else:
            async with adapted._execute_mutex:
                found = await connection._execute(trip)
            adapted.writing = begins_write
        self._description, self._rowcount, self._lastrowid, rows = found
        self._rows = collections.deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._run("execute", operation, () if parameters is None else parameters)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._run("executemany", operation, seq_of_parameters)


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """Inside a write transaction on WAL, statements run on the event loop's thread.

    Once ``BEGIN IMMEDIATE`` holds the write lock, no statement of the transaction waits for
    another connection (WAL readers never block a writer), so each takes microseconds of
    SQLite, where a trip to the connection's thread costs a hand-off each way. A read's
    ``BEGIN`` (deferred: it takes no lock) and, on WAL, a ``ROLLBACK`` (it lets go of locks and
    writes nothing) run there too, and so does ``BEGIN IMMEDIATE`` when no other writer holds
    the lock (``unless_busy``). When one does, and for ``COMMIT`` (its fsync) and every read
    outside a write, the statement goes to the thread, where a wait stalls nothing else.
    """

    __slots__ = ("in_wal", "writing")
    _cursor_cls = _OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.in_wal = False  # as the journal_mode pragma answered (see _tune_sqlite)
        self.writing = False

    def unless_busy(self, trip: Callable[[], T]) -> T | None:
        """``trip`` on this thread if no lock is in its way; None, and nothing done, if one is.

        SQLite's busy handler is off meanwhile, so a lock held by another writer answers
        SQLITE_BUSY at once instead of being waited for on the loop's thread.
        """
        raw = self._connection._conn
        raw.execute("PRAGMA busy_timeout=0")
        try:
            return trip()
        except sqlite3.OperationalError as error:
            # any kind of SQLITE_BUSY (the extended codes keep it in their low byte)
            if getattr(error, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return None
        finally:
            raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def commit(self) -> None:
        self.writing = False
        super().commit()

    def rollback(self) -> None:
        """Skipped when no transaction is open: the pool rolls back every connection it takes
        back, after a commit too, and each would cost a trip to the thread for nothing."""
        self.writing = False
        connection = self._connection
        if connection._connection is None:  # closed: refused as aiosqlite refuses it
            super().rollback()
        elif not connection._conn.in_transaction:
            return
        elif self.in_wal:
            try:
                connection._conn.rollback()
            except Exception as error:
                self._handle_exception(error)
        else:
            super().rollback()


class _OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        return _OneTripConnection(self, adapted._connection)


class AsyncSQLiteDialect(SQLiteDialect_aiosqlite):
    """SQLAlchemy's aiosqlite dialect on the SQLite that the pysqlite3 wheel carries."""

    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> AsyncAdapt_aiosqlite_dbapi:
        return _OneTripDBAPI(_aiosqlite_on_pysqlite3(), sqlite3)


class SyncSQLiteDialect(SQLiteDialect_pysqlite):
    """The plain pysqlite dialect on the same library (migrations, tools)."""

    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> types.ModuleType:
        return sqlite3


registry.register("sqlite.twofa_aiosqlite", __name__, "AsyncSQLiteDialect")
registry.register("sqlite.twofa_pysqlite", __name__, "SyncSQLiteDialect")
_MIGRATIONS = Path(__file__).parent / "migrations"


def _with_driver(url: str, drivers: dict[str, str]) -> str:
    """Accept the plain URL users paste and pick the project's driver for it."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in drivers:
        raise ValueError(f"unsupported database {backend!r}: use SQLite or PostgreSQL")
    return parsed.set(drivername=drivers[backend]).render_as_string(hide_password=False)


def async_url(url: str) -> str:
    return _with_driver(url, _ASYNC_DRIVERS)


def sync_url(url: str) -> str:
    return _with_driver(url, _SYNC_DRIVERS)


class Database:
    """One engine per process; ``write()`` serializes writers up front on SQLite (``_turn``).

    ``audit`` is the keyed chain audit records are written with; whoever holds the pepper sets
    it (the service, the worker's effects), and without it a write cannot append to the log.
    """

    def __init__(self, url: str, *, audit: Chain | None = None) -> None:
        self.audit = audit
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        # a statement's values are hashes, ciphertexts and keyed digests: never in an error's
        # text, which a traceback logs or a failed activity's cause carries into history (S4)
        options: dict[str, Any] = {"hide_parameters": True}
        if self.is_sqlite:
            options["connect_args"] = {"timeout": 30}
        else:
            options.update(pool_size=10, max_overflow=20)
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.is_sqlite:
            _tune_sqlite(self.engine)
        else:
            _drop_closed_connections(self.engine)
            _hide_row_values(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(
            self.engine.execution_options(twofa_write=True), expire_on_commit=False
        )
        self._writers = asyncio.Lock() if self.is_sqlite else None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction that commits on success and rolls back on any error.

        When it appended audit records, the anchor moves to the newest once it has committed.
        """
        async with self._turn(), self._write_sessions(info={CHAIN_INFO: self.audit}) as session:
            async with session.begin():
                yield session
            head = session.info.pop(HEAD_INFO, None)
        if head is not None and self.audit is not None:
            self.audit.advance_soon(head)

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """On SQLite, this process's writers take turns for the one write lock, first come
        first served, and the next begins the moment the last commits. Left to SQLite, each
        waiter slept 1, 2, 5 … up to 100 ms between tries, so the lock sat free while they
        slept and a newcomer could overtake a writer that had waited long: at 20 journeys at
        once the slowest took up to twice as long. Another process's writer is still waited
        for in ``BEGIN IMMEDIATE``. Waiting here is bounded as SQLite's wait is, by the busy
        timeout.
        """
        if self._writers is None:
            yield
            return
        try:
            async with asyncio.timeout(BUSY_TIMEOUT_MS / 1000):
                await self._writers.acquire()
        except TimeoutError:
            raise OperationalError(
                BEGIN_WRITE, None, sqlite3.OperationalError("database is locked")
            ) from None
        try:
            yield
        finally:
            self._writers.release()

    async def answers(self) -> None:
        """A round trip to the database (the health check); raises when it does not answer."""
        async with self._sessions() as session:
            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self.audit is not None:
            await self.audit.settle()
        await self.engine.dispose()


#: SQLite before 3.51.3 has the WAL-reset bug (https://www.sqlite.org/wal.html#walresetbug):
#: with several processes writing and checkpointing one WAL database at once, it can corrupt
#: the file. The embedded default has exactly that (API, worker, dashboard), and the test suite
#: hit "database disk image is malformed" on Debian 12's SQLite 3.40.1. Every process therefore
#: opens the store through the pysqlite3 wheel, which carries a fixed SQLite, never through
#: the system's library; should that wheel ever carry an old one, a rollback journal again.
WAL_IS_SAFE = sqlite3.sqlite_version_info >= (3, 51, 3)
JOURNAL_MODE = "WAL" if WAL_IS_SAFE else "TRUNCATE"
#: How a write transaction begins: it takes the write lock at once, so none fails midway.
BEGIN_WRITE = "BEGIN IMMEDIATE"
#: How long a statement waits for another connection's lock before SQLite gives up.
BUSY_TIMEOUT_MS = 30_000
#: How a read transaction begins: deferred, it takes a lock only at its first read.
BEGIN_READ = "BEGIN"


#: Each supported database's dialect module, by name: its INSERT has the upsert (ON CONFLICT DO
#: UPDATE) both databases run.
UPSERT_DIALECTS: dict[str, Any] = {"postgresql": postgresql, "sqlite": sqlite}


def insert_for(db: AsyncSession) -> Any:
    """The session's dialect's INSERT, with its upsert."""
    return UPSERT_DIALECTS[db.get_bind().dialect.name].insert


def _tune_sqlite(engine: AsyncEngine) -> None:
    """BEGIN IMMEDIATE for writers, so none fails mid-transaction; WAL where it is safe."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            f"busy_timeout={BUSY_TIMEOUT_MS}",  # first: turning WAL on waits for other locks
            f"journal_mode={JOURNAL_MODE}",
            # durable: a commit the caller was told of survives a power cut too (with WAL, one
            # fsync of the log per commit; NORMAL would skip it)
            "synchronous=FULL",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
            if pragma.startswith("journal_mode"):  # WAL may be refused (a network file system)
                dbapi_connection.in_wal = str(cursor.fetchone()[0]).lower() == "wal"
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("twofa_write", False)
        connection.exec_driver_sql(BEGIN_WRITE if immediate else BEGIN_READ)


def _drop_closed_connections(engine: AsyncEngine) -> None:
    """A pooled connection the server closed (a restart, a terminated backend) is replaced
    before use. asyncpg sees the close as it happens, so this costs no round trip, where a
    pre-ping costs one per transaction (four per login)."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the server closed this pooled connection")


def _hide_row_values(engine: AsyncEngine) -> None:
    """PostgreSQL's error detail quotes the values a statement was refused for ("Key (email)=
    (…)", "Failing row contains (…)", a PIN hash and a seal's ciphertext among them): cleared
    from the driver's error, which a traceback prints as the cause, so none reaches a log or a
    failed activity's history (S4), as ``hide_parameters`` keeps out the statement's own."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        error: BaseException | None = context.original_exception
        seen: set[int] = set()
        while error is not None and id(error) not in seen:  # the driver's error, its copy
            seen.add(id(error))
            for name in ("detail", "hint"):
                if isinstance(getattr(error, name, None), str):
                    with contextlib.suppress(AttributeError):
                        setattr(error, name, None)
            error = error.__cause__


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def migrate(url: str, patience_seconds: float = PATIENCE_SECONDS) -> None:
    """Bring the schema to the newest revision; run on every start.

    On PostgreSQL, while the running release holds a table the migration must lock, it rolls
    back and tries again (see migration_locks), for up to ``patience_seconds``."""
    from alembic import command  # imported here: only the migrating process needs it

    if make_url(url).get_backend_name() == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:":
            _private_file(Path(database))
    config = alembic_config(url)
    give_up = time.monotonic() + patience_seconds
    for attempt in itertools.count(1):
        try:
            command.upgrade(config, "head")
            return
        except TablesBusy:
            if time.monotonic() >= give_up:
                raise TablesBusy(
                    f"could not lock the tables in {attempt} tries over {patience_seconds:.0f} s: "
                    "the running release's transactions kept holding them. Nothing was applied; "
                    "run the migration again."
                ) from None
            if attempt == 1:
                log.warning("the running release holds a table; migrating again shortly")
            time.sleep(random.uniform(0.05, 0.25))  # its transactions last milliseconds


#: SQLSTATE classes of a server away or busy, not of a wrong statement: connection exceptions,
#: insufficient resources, an operator's shutdown, a deadlock or serialization failure.
_AWAY_OR_BUSY = ("08", "53", "57P", "40")


def did_not_answer(error: BaseException) -> bool:
    """The database was away or busy past its timeout, rather than refusing the statement: the
    request's outcome is unknown and repeating it is safe (docs/rules.md S9, docs/api.md: 503)."""
    if isinstance(error, OSError | PoolTimeout):
        # a new connection failing comes out unwrapped: refused, timed out, a name that no
        # longer resolves (socket.gaierror), or every address of a name refusing at once
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    state = getattr(error.orig, "sqlstate", None) or ""
    return state.startswith(_AWAY_OR_BUSY) or "database is locked" in str(error.orig)


def _private_file(path: Path) -> None:
    """The SQLite file readable by its owner only; its journal and WAL inherit its mode."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    if path.stat().st_uid == os.geteuid() and path.stat().st_mode & 0o077:
        path.chmod(0o600)  # created by an older version, group- or world-readable
