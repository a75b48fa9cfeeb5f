"""One archiver per policy at a time, across processes, replicas and machines.

PostgreSQL: ``pg_try_advisory_xact_lock`` in a transaction held open for the whole run on a
connection of its own. A transaction-level lock dies with the transaction, so it cannot leak
through the connection pool the way a session-level lock does when a run forgets to unlock,
and it dies with the connection when the process is killed. The transaction holds no row
locks and, in READ COMMITTED, no snapshot between statements, so it does not hold back vacuum.

SQLite: an exclusive ``flock`` on a file beside the PRIMARY database, released by the
kernel when the process exits however it exits.
"""

from __future__ import annotations

import fcntl
import logging
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

logger = logging.getLogger(__name__)

#: First half of the two-integer advisory lock key: "Sediment archiver".
LOCK_NAMESPACE = 0x5EDD


def lock_key(policy: str) -> int:
    """Second half of the advisory lock key, stable for a policy name."""
    return zlib.crc32(policy.encode()) & 0x7FFFFFFF


@contextmanager
def runner_lock(primary: sa.Engine, policy: str) -> Iterator[bool]:
    """Hold the runner lock of ``policy`` for the ``with`` block, if it is free.

    Yields ``True`` when this process holds the lock, ``False`` when another runner does;
    never waits.
    """
    if primary.dialect.name == "postgresql":
        with _advisory_lock(primary, policy) as acquired:
            yield acquired
    else:
        with _file_lock(_lock_path(primary, policy)) as acquired:
            yield acquired


@contextmanager
def _advisory_lock(primary: sa.Engine, policy: str) -> Iterator[bool]:
    with primary.connect() as connection, connection.begin():
        acquired = bool(connection.execute(
            sa.text("SELECT pg_try_advisory_xact_lock(:namespace, :key)"),
            {"namespace": LOCK_NAMESPACE, "key": lock_key(policy)},
        ).scalar_one())
        yield acquired


def _lock_path(primary: sa.Engine, policy: str) -> Path:
    database = primary.url.database
    assert database, "SQLite URLs are validated to name a file"
    return Path(f"{database}.archive-{policy}.lock")


@contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
