"""A throwaway PostgreSQL server from Debian's packages, on loopback, for one test session."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(
            "PostgreSQL is not installed: apt-get install postgresql (make test does it as root)"
        )
    return found[-1]


def _as_postgres(command: list[str]) -> list[str]:
    """initdb refuses root: run the server as Debian's postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server(directory: Path, *, durable: bool = False) -> Iterator[str]:
    """Yields a plain ``postgresql://`` URL to a fresh database; stops the server afterwards.
    ``durable``: every commit flushed to disk, as PostgreSQL's defaults do (the bench's logins);
    else, for the tests' speed, nothing is."""
    directory.mkdir(parents=True, exist_ok=True)
    data, sockets = directory / "data", directory / "sockets"
    sockets.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres(
            [_bin("initdb"), "-D", str(data), "-U", "twofa", "--auth=trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    start(directory, port, durable=durable)
    try:
        subprocess.run(
            [_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "twofa", "twofa"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://twofa@127.0.0.1:{port}/twofa"
    finally:
        stop(directory)


def start(directory: Path, port: int, *, durable: bool = False) -> None:
    """The server of ``postgres_server(directory)``, started (again) on ``port``."""
    options = (
        f"-p {port} -k {directory / 'sockets'} -c listen_addresses=127.0.0.1 -c max_connections=200"
    )
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    started = _pg_ctl(directory, "-o", options, "-w", "-l", str(directory / "log"), "start")
    started.check_returncode()


def stop(directory: Path) -> None:
    """Fast shutdown: sessions are ended, as when an operator stops the server."""
    _pg_ctl(directory, "-m", "fast", "-w", "stop")


def _pg_ctl(directory: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [_bin("pg_ctl"), "-D", str(directory / "data"), *args]
    return subprocess.run(_as_postgres(command), capture_output=True, check=False)


def dump(url: str) -> bytes:
    """Every row of the database as text, to look for secrets that must not be stored."""
    return subprocess.run(
        [_bin("pg_dump"), "--data-only", url], check=True, capture_output=True
    ).stdout


@contextmanager
def throwaway_directory(prefix: str) -> Iterator[Path]:
    """A fresh temporary directory the postgres user can reach, removed with all it holds."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def throwaway_server(prefix: str, *, durable: bool = False) -> Iterator[str]:
    """A PostgreSQL server in a throwaway directory."""
    with (
        throwaway_directory(prefix) as directory,
        postgres_server(directory / "server", durable=durable) as url,
    ):
        yield url
