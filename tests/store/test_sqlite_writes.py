"""SQLite write transactions: their statements on the event loop's thread, their waits off it.

Inside a write transaction on WAL, statements run on the loop's thread (no lock can stop them
there), and so does its ``BEGIN IMMEDIATE`` when no other writer holds the lock; when one does,
the wait, and every read outside a write, run on the connection's own thread, so a wait never
stalls the loop. The writers of one process take turns before they begin, so none of them
waits inside SQLite for another. A connection going back to the pool is rolled back only when a
transaction is still open; a read's ``BEGIN`` and ``ROLLBACK``, which wait for nothing, run on
the loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from pysqlite3 import dbapi2 as sqlite3
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from twofa.store.db import (
    BUSY_TIMEOUT_MS,
    WAL_IS_SAFE,
    Database,
    did_not_answer,
    sync_url,
)

pytestmark = [
    pytest.mark.single_backend,
    pytest.mark.skipif(not WAL_IS_SAFE, reason="inline statements need WAL"),
]


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'writes.db'}")
    async with db.write() as session:
        await session.execute(text("CREATE TABLE things (id INTEGER PRIMARY KEY)"))
    yield db
    await db.dispose()


async def thread_of_statement(session: AsyncSession) -> int:
    """The id of the thread that runs this session's next statement."""
    raw = (await (await session.connection()).get_raw_connection()).driver_connection
    assert raw is not None
    raw._conn.create_function("thread_of_statement", 0, threading.get_ident)
    return int((await session.execute(text("SELECT thread_of_statement()"))).scalar_one())


async def test_statements_inside_a_write_run_on_the_loops_thread(database: Database) -> None:
    loop_thread = threading.get_ident()
    async with database.write() as session:
        assert await thread_of_statement(session) == loop_thread
    async with database.read() as session:
        assert await thread_of_statement(session) != loop_thread


async def test_without_wal_every_statement_runs_on_the_connections_thread() -> None:
    """SQLite answers the WAL pragma with another journal mode (here: a database in memory),
    under which a statement inside a write may wait for a lock."""
    in_memory = Database("sqlite://")
    try:
        async with in_memory.write() as session:
            assert await thread_of_statement(session) != threading.get_ident()
    finally:
        await in_memory.dispose()


async def test_a_failed_write_leaves_its_connection_to_the_thread_again(
    database: Database,
) -> None:
    async with database.write() as session:
        await session.execute(text("INSERT INTO things (id) VALUES (1)"))
    with pytest.raises(IntegrityError):
        async with database.write() as session:
            await session.execute(text("INSERT INTO things (id) VALUES (1)"))
    async with database.read() as session:
        assert await thread_of_statement(session) != threading.get_ident()
        assert (await session.execute(text("SELECT count(*) FROM things"))).scalar_one() == 1
    async with database.write() as session:
        await session.execute(text("INSERT INTO things (id) VALUES (2)"))


async def test_a_write_waiting_for_another_writer_leaves_the_loop_free(
    database: Database, tmp_path: Path
) -> None:
    """The other writer lets go only once this loop has run on while the write waits for its
    lock, or 5 s after the write began: a loop stalled in the waiting ``BEGIN IMMEDIATE`` could
    not tell it in time. The wait is seen, not assumed: SQLite traces the write's ``BEGIN
    IMMEDIATE`` as it starts on the connection's thread, which the held lock keeps it on."""
    # the store's own SQLite library: two libraries in one process do not see each other's locks
    other = sqlite3.connect(tmp_path / "writes.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, as SQLite sees it
    loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()
    began = threading.Event()  # the write's BEGIN IMMEDIATE started, on either thread
    waiting = asyncio.Event()  # ... on the connection's thread, where it waits for the lock
    loop_ran_on = threading.Event()
    told_in_time: list[bool] = []

    def traced(sql: str) -> None:
        if sql == "BEGIN IMMEDIATE":
            began.set()
            if threading.get_ident() != loop_thread:
                loop.call_soon_threadsafe(waiting.set)

    @event.listens_for(database.engine.sync_engine, "checkout")
    def trace(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.driver_connection._conn.set_trace_callback(traced)

    def let_go() -> None:
        began.wait()
        told_in_time.append(loop_ran_on.wait(timeout=5))
        other.execute("ROLLBACK")

    releaser = threading.Thread(target=let_go)
    releaser.start()
    waited = asyncio.create_task(waiting.wait())
    try:

        async def write() -> None:
            async with database.write() as session:
                await session.execute(text("INSERT INTO things (id) VALUES (3)"))

        writing = asyncio.create_task(write())
        await asyncio.wait({writing, waited}, return_when=asyncio.FIRST_COMPLETED)
        assert waited.done(), f"the write never waited on its connection's thread: {writing}"
        loop_ran_on.set()
        assert not writing.done()
        await asyncio.wait_for(writing, timeout=10)
    finally:
        waited.cancel()
        began.set()
        loop_ran_on.set()
        releaser.join()
        other.close()
    assert told_in_time == [True]
    async with database.read() as session:
        assert (await session.execute(text("SELECT id FROM things"))).scalars().all() == [3]


@pytest.fixture
def trips(database: Database, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every call handed to the thread of one of ``database``'s connections, in
    order; the session's other databases (the worker's, the API servers') may write meanwhile."""
    ours: set[aiosqlite.Connection] = set()

    @event.listens_for(database.engine.sync_engine, "checkout")
    def checked_out(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        ours.add(dbapi_connection._connection)

    handed: list[str] = []
    hand = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, function: Any, *args: Any, **kwargs: Any) -> Any:
        if self in ours:
            handed.append(getattr(function, "__name__", repr(function)))
        return await hand(self, function, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return handed


async def test_an_uncontended_write_goes_to_the_thread_for_its_commit_only(
    database: Database, trips: list[str]
) -> None:
    """No other writer holds the lock, so ``BEGIN IMMEDIATE`` takes it on the loop's thread;
    the pool rolls back every connection it takes back, but after a commit there is nothing to
    roll back, and that trip is not made either."""
    async with database.write() as session:
        await session.execute(text("INSERT INTO things (id) VALUES (4)"))
    assert trips == ["commit"]


async def test_a_write_begins_on_the_loops_thread_unless_another_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    """A held lock is tried once on the loop's thread without waiting, then waited for on the
    connection's thread; the busy timeout is back for every later statement."""
    database = Database(f"sqlite:///{tmp_path / 'traced.db'}")
    begun_on: list[int] = []  # the thread of each BEGIN IMMEDIATE that SQLite ran

    @event.listens_for(database.engine.sync_engine, "connect")
    def trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection._conn.set_trace_callback(
            lambda sql: begun_on.append(threading.get_ident()) if sql == "BEGIN IMMEDIATE" else None
        )

    try:
        async with database.write() as session:
            await session.execute(text("CREATE TABLE things (id INTEGER PRIMARY KEY)"))
        assert begun_on == [threading.get_ident()]
        other = sqlite3.connect(
            tmp_path / "traced.db", isolation_level=None, check_same_thread=False
        )
        other.execute("BEGIN IMMEDIATE")
        released = threading.Timer(0.3, other.execute, ["ROLLBACK"])
        released.start()
        try:
            async with database.write() as session:
                await session.execute(text("INSERT INTO things (id) VALUES (1)"))
                waits = (await session.execute(text("PRAGMA busy_timeout"))).scalar_one()
        finally:
            released.join()
            other.close()
        assert begun_on[1] == threading.get_ident()  # tried here, without waiting
        assert begun_on[2:] and all(t != threading.get_ident() for t in begun_on[2:])
        assert waits == BUSY_TIMEOUT_MS
    finally:
        await database.dispose()


async def test_a_read_goes_to_the_thread_for_its_statements_only(
    database: Database, trips: list[str]
) -> None:
    """Its deferred ``BEGIN`` takes no lock and its ``ROLLBACK`` lets go of one: neither waits,
    so both run on the loop's thread; the transaction is ended all the same."""
    async with database.read() as session:
        assert (await session.execute(text("SELECT count(*) FROM things"))).scalar_one() == 0
        raw = (await (await session.connection()).get_raw_connection()).driver_connection
        assert raw is not None and raw._conn.in_transaction
    assert not raw._conn.in_transaction
    assert trips == ["trip"]


async def test_a_failed_write_is_rolled_back_before_its_connection_goes_back(
    database: Database,
) -> None:
    with pytest.raises(IntegrityError):
        async with database.write() as session:
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            assert raw is not None
            await session.execute(text("INSERT INTO things (id) VALUES (5)"))
            await session.execute(text("INSERT INTO things (id) VALUES (5)"))
    assert raw is not None and not raw._conn.in_transaction
    async with database.read() as session:
        assert (await session.execute(text("SELECT count(*) FROM things"))).scalar_one() == 0


async def test_writers_of_one_process_take_turns_and_never_wait_inside_sqlite(
    database: Database, trips: list[str]
) -> None:
    """Each begins once the one before has committed, in the order they came: none finds the
    lock held, so no ``BEGIN IMMEDIATE`` falls back to wait (SQLite's waits sleep up to 100 ms
    between tries, with the lock free meanwhile)."""
    began: list[int] = []

    async def write(n: int) -> None:
        async with database.write() as session:
            began.append(n)
            await asyncio.sleep(0.02)  # holds the lock while the others arrive
            await session.execute(text(f"INSERT INTO things (id) VALUES ({n})"))

    await asyncio.gather(*(write(n) for n in range(8)))
    assert began == list(range(8))
    assert trips == ["commit"] * 8
    async with database.read() as session:
        assert (await session.execute(text("SELECT count(*) FROM things"))).scalar_one() == 8


async def test_a_writer_waits_for_its_turn_no_longer_than_the_busy_timeout(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As SQLite's own wait for another process's writer: then "database is locked"."""
    monkeypatch.setattr("twofa.store.db.BUSY_TIMEOUT_MS", 200)
    holding, done = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with database.write() as session:
            await session.execute(text("INSERT INTO things (id) VALUES (1)"))
            holding.set()
            await done.wait()

    async def write() -> None:
        async with database.write() as session:
            await session.execute(text("INSERT INTO things (id) VALUES (2)"))

    holder = asyncio.create_task(hold())
    await holding.wait()
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            await asyncio.wait_for(write(), timeout=10)  # an endless wait fails, not hangs
    finally:
        done.set()
        await holder
    async with database.read() as session:
        assert (await session.execute(text("SELECT id FROM things"))).scalars().all() == [1]


def test_a_busy_database_did_not_answer_while_a_wrong_statement_did(tmp_path: Path) -> None:
    """The API's 503 (did_not_answer) is for a lock held past the wait, never for a refusal."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE things (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN EXCLUSIVE")
    # the same SQLite library as the holder's: two copies in one process do not see each
    # other's locks (POSIX locks belong to the process)
    engine = create_engine(sync_url(f"sqlite:///{path}"), connect_args={"timeout": 0})
    try:
        with pytest.raises(OperationalError) as busy, engine.connect() as connection:
            connection.execute(text("INSERT INTO things (id) VALUES (1)"))
        holder.rollback()
        with pytest.raises(OperationalError) as refused, engine.connect() as connection:
            connection.execute(text("SELECT * FROM no_such_table"))
    finally:
        holder.close()
        engine.dispose()
    assert did_not_answer(busy.value), busy.value
    assert not did_not_answer(refused.value), refused.value
