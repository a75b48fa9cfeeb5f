"""One archiver per policy at a time, across processes, replicas and machines.

PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a PRIMARY connection
held for the whole run, and every batch's PRIMARY transaction runs on that same connection.
So a batch can only commit while its connection, and with it the lock, is alive: when a
restart or ``pg_terminate_backend`` ends the connection, the lock and the batch in flight
die together, and no second runner can be moving rows of the policy at the same moment.
Before each batch the runner checks the lock; a lost one is taken again on a new connection
if it is free, and the run stops ``lock_lost`` if another runner has it. At the end the lock
is released, and a connection whose release fails is discarded rather than returned to the
pool, so a session-level lock cannot leak through the pool.

SQLite: an exclusive ``flock`` on a file beside the PRIMARY database, released by the
kernel when the process exits however it exits; each batch takes SQLite's write lock with
``BEGIN IMMEDIATE`` on a pooled connection.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from sediment.core.databases import SQLITE_WRITE_LOCK
from sediment.core.error_text import first_line

logger = logging.getLogger(__name__)

#: How long a lock held by a connection this process just discarded may take to be freed.
RELEASE_GRACE_SECONDS = 2.0

#: First half of the two-integer advisory lock key: "Sediment archiver".
LOCK_NAMESPACE = 0x5EDD


class LockLost(RuntimeError):
    """The runner lost its lock and could not take it back: another runner may hold it."""


def lock_key(policy: str) -> int:
    """Second half of the advisory lock key, stable for a policy name."""
    return zlib.crc32(policy.encode()) & 0x7FFFFFFF


class RunnerLock:
    """The runner lock of one policy, and the PRIMARY connection its batches run on."""

    def __init__(self, primary: sa.Engine, policy: str) -> None:
        self.primary = primary
        self.policy = policy
        self._connection: sa.Connection | None = None
        self._file: int | None = None

    @property
    def is_postgresql(self) -> bool:
        return self.primary.dialect.name == "postgresql"

    def acquire(self) -> bool:
        """Take the lock if it is free; never wait."""
        if self.is_postgresql:
            return self._advisory_acquire()
        self._file = _flock(_lock_path(self.primary, self.policy))
        return self._file is not None

    def ensure_held(self) -> bool:
        """Check the lock before a batch; take it again on a new connection if it was lost.

        :returns: ``True`` when the lock had been lost and was taken back (the caller must
            then check that nobody ran the policy meanwhile).
        :raises LockLost: when it was lost and another runner holds it now.
        :raises sqlalchemy.exc.OperationalError: when the database cannot be reached to take
            it back (retryable, like a batch).
        """
        if not self.is_postgresql:
            return False
        if self._connection is not None and not self._connection.invalidated:
            try:
                if self._holds_lock(self._connection):
                    return False
            except (sa.exc.OperationalError, sa.exc.InterfaceError):
                pass  # the connection died, and the lock with it
        self._discard()
        # A database still down raises OperationalError here: the runner retries the batch
        # (and so this) with backoff, and reports the outage itself if it outlasts that.
        taken = self._advisory_acquire()
        # The discarded connection's server process ends its session (and lock) only after
        # the socket closes: give it a moment before concluding another runner took over.
        deadline = time.monotonic() + RELEASE_GRACE_SECONDS
        while not taken and time.monotonic() < deadline:
            time.sleep(0.05)
            taken = self._advisory_acquire()
        if not taken:
            raise LockLost(f"lost the runner lock of policy {self.policy!r} with its "
                           "connection, and another runner holds it now")
        logger.warning("policy %s: the runner lock was lost with its connection and taken "
                       "again", self.policy)
        return True

    @contextmanager
    def batch_connection(self) -> Iterator[sa.Connection]:
        """The PRIMARY connection for one batch: the locked one on PostgreSQL, a pooled one
        taking SQLite's write lock up front elsewhere."""
        if self.is_postgresql:
            if self._connection is None:
                raise LockLost(f"the runner lock of policy {self.policy!r} is not held")
            yield self._connection
            return
        with self.primary.connect().execution_options(**{SQLITE_WRITE_LOCK: True}) as c:
            yield c

    def release(self) -> None:
        """Release the lock; never raises (a dead connection has released it already)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            os.close(self._file)
            self._file = None
        if self._connection is None:
            return
        try:
            if not self._connection.invalidated:
                self._connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:namespace, :key)"), self._params)
                self._connection.commit()
                self._connection.close()
                self._connection = None
                return
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("policy %s: releasing the runner lock failed (%s); its connection "
                           "is discarded, which releases it", self.policy, first_line(exc))
        self._discard()

    @property
    def _params(self) -> dict[str, int]:
        return {"namespace": LOCK_NAMESPACE, "key": lock_key(self.policy)}

    def _advisory_acquire(self) -> bool:
        connection = self.primary.connect()
        try:
            acquired = bool(connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:namespace, :key)"), self._params
            ).scalar_one())
            connection.commit()
        except BaseException:
            connection.invalidate()
            connection.close()
            raise
        if not acquired:
            connection.close()
            return False
        self._connection = connection
        return True

    def _holds_lock(self, connection: sa.Connection) -> bool:
        held = connection.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND classid = :namespace AND objid = :key "
            "AND objsubid = 2"), self._params).scalar_one()
        connection.commit()
        return bool(held)

    def _discard(self) -> None:
        """Throw the connection away (closing it at the server ends its session locks)."""
        if self._connection is None:
            return
        try:
            self._connection.invalidate()
            self._connection.close()
        except sa.exc.SQLAlchemyError:
            pass
        self._connection = None


@contextmanager
def runner_lock(primary: sa.Engine, policy: str) -> Iterator[bool]:
    """Hold the runner lock of ``policy`` for the ``with`` block, if it is free.

    Yields ``True`` when this process holds the lock, ``False`` when another runner does;
    never waits.
    """
    lock = RunnerLock(primary, policy)
    try:
        yield lock.acquire()
    finally:
        lock.release()


def _lock_path(primary: sa.Engine, policy: str) -> Path:
    database = primary.url.database
    assert database, "SQLite URLs are validated to name a file"
    return Path(f"{database}.archive-{policy}.lock")


def _flock(path: Path) -> int | None:
    """Open ``path`` and lock it exclusively; ``None`` when another process holds it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor
