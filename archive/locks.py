"""One archiver per policy at a time, across processes, replicas and machines.

PostgreSQL: two session-level advisory locks (``pg_try_advisory_lock``), each on its own
PRIMARY connection (a *lane*) held for the whole run, and every batch's PRIMARY transaction
runs on one of the two. The runner needs both: a second runner that takes one finds the
other held and gives up. Two lanes let batch N's deletes run while batch N+1 is selected
(see :mod:`archive.pipeline`). So a batch can only commit while its connection,
and with it half of the lock, is alive: when a restart or ``pg_terminate_backend`` ends the
connection, that half and the batch in flight die together, and no second runner can be
moving rows of the policy at the same moment. The two halves carry the same two numbers,
``(0x5EDD, crc32(policy))``, once in PostgreSQL's two-integer key space and once as one
bigint, so ``pg_locks`` shows them side by side (``objsubid`` 2 and 1).

Before each batch the runner checks its lane's lock; a lost lock is taken again on new
connections if it is free, and the run stops ``lock_lost`` if another runner has it. At the
end both are released, and a connection whose release fails is discarded rather than
returned to the pool, so a session-level lock cannot leak through the pool.

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


#: The two halves of the lock on PostgreSQL: how each is taken, and its ``objsubid``.
_HALVES = (
    ("pg_try_advisory_lock(:namespace, :key)", "pg_advisory_unlock(:namespace, :key)", 2),
    ("pg_try_advisory_lock(:bigint)", "pg_advisory_unlock(:bigint)", 1),
)


class RunnerLock:
    """The runner lock of one policy, and the PRIMARY connections its batches run on."""

    def __init__(self, primary: sa.Engine, policy: str) -> None:
        self.primary = primary
        self.policy = policy
        self._lanes: list[sa.Connection] = []
        self._file: int | None = None

    @property
    def is_postgresql(self) -> bool:
        return self.primary.dialect.name == "postgresql"

    @property
    def lanes(self) -> int:
        """How many batches may be between their two commits at once: one per connection
        holding half of the lock on PostgreSQL; one on SQLite (a single writer)."""
        return len(_HALVES) if self.is_postgresql else 1

    def acquire(self) -> bool:
        """Take the lock if it is free; never wait."""
        if self.is_postgresql:
            return self._advisory_acquire()
        self._file = _flock(_lock_path(self.primary, self.policy))
        return self._file is not None

    def holds(self, lane: int) -> bool:
        """Whether ``lane``'s connection is alive and holds its half of the lock (always
        true on SQLite, whose lock the kernel holds for the process)."""
        if not self.is_postgresql:
            return True
        if len(self._lanes) <= lane or self._lanes[lane].invalidated:
            return False
        try:
            return self._holds_half(lane)
        except (sa.exc.OperationalError, sa.exc.InterfaceError):
            return False  # the connection died, and its half of the lock with it

    def ensure_held(self) -> bool:
        """Check the lock before a batch; take it again on new connections if it was lost.
        Call with no batch in flight (a lost lock discards every lane's connection).

        :returns: ``True`` when the lock had been lost and was taken back (the caller must
            then check that nobody ran the policy meanwhile).
        :raises LockLost: when it was lost and another runner holds it now.
        :raises sqlalchemy.exc.OperationalError: when the database cannot be reached to take
            it back (retryable, like a batch).
        """
        if not self.is_postgresql:
            return False
        if self._lanes and all(self.holds(lane) for lane in range(self.lanes)):
            return False
        self._discard()
        # A database still down raises OperationalError here: the runner retries the batch
        # (and so this) with backoff, and reports the outage itself if it outlasts that.
        taken = self._advisory_acquire()
        # The discarded connections' server processes end their sessions (and locks) only
        # after the sockets close: give them a moment before concluding another runner
        # took over.
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
    def batch_connection(self, lane: int = 0) -> Iterator[sa.Connection]:
        """The PRIMARY connection for one batch: ``lane``'s locked one on PostgreSQL, a
        pooled one taking SQLite's write lock up front elsewhere."""
        if self.is_postgresql:
            if len(self._lanes) <= lane:
                raise LockLost(f"the runner lock of policy {self.policy!r} is not held")
            yield self._lanes[lane]
            return
        with self.primary.connect().execution_options(**{SQLITE_WRITE_LOCK: True}) as c:
            yield c

    def release(self) -> None:
        """Release the lock; never raises (a dead connection has released it already)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            os.close(self._file)
            self._file = None
        for (_, unlock, _), connection in zip(_HALVES, self._lanes, strict=False):
            try:
                if not connection.invalidated:
                    connection.execute(sa.text(f"SELECT {unlock}"), self._params)
                    connection.commit()
                    connection.close()
                    continue
            except sa.exc.SQLAlchemyError as exc:
                logger.warning("policy %s: releasing the runner lock failed (%s); its "
                               "connection is discarded, which releases it", self.policy,
                               first_line(exc))
            _discard(connection)
        self._lanes = []

    @property
    def _params(self) -> dict[str, int]:
        key = lock_key(self.policy)
        return {"namespace": LOCK_NAMESPACE, "key": key, "bigint": LOCK_NAMESPACE << 32 | key}

    def _advisory_acquire(self) -> bool:
        """Take both halves, each on a new connection; all or nothing."""
        for take, _, _ in _HALVES:
            connection = self.primary.connect()
            try:
                acquired = bool(connection.execute(sa.text(f"SELECT {take}"),
                                                   self._params).scalar_one())
                connection.commit()
            except BaseException:
                _discard(connection)
                self.release()
                raise
            if not acquired:
                connection.close()
                self.release()
                return False
            self._lanes.append(connection)
        return True

    def _holds_half(self, lane: int) -> bool:
        connection = self._lanes[lane]
        held = connection.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND classid = :namespace AND objid = :key "
            "AND objsubid = :subid"), {**self._params, "subid": _HALVES[lane][2]}).scalar_one()
        connection.commit()
        return bool(held)

    def _discard(self) -> None:
        """Throw the connections away (closing them at the server ends their locks)."""
        for connection in self._lanes:
            _discard(connection)
        self._lanes = []


def _discard(connection: sa.Connection) -> None:
    try:
        connection.invalidate()
        connection.close()
    except sa.exc.SQLAlchemyError:
        pass


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
