"""A run's batches, overlapped: batch N's PRIMARY deletes run while batch N+1 is copied.

Every batch still commits in the order that makes a crash harmless (ARCHIVE's copy, then
PRIMARY's deletes; see :mod:`archive.mover`). What overlaps is work on different rows in
different databases: on PostgreSQL the runner lock has two lanes (connections, see
:mod:`archive.locks`), and while one lane deletes and commits batch N in a thread, the
other selects and locks batch N+1 after N's last key and copies it into ARCHIVE. At most
one batch is between its two commits while the next is being copied, so recovery still
finds every row in both databases inside the run's pending window, as for one batch.

Batches end in the order they were selected. When batch N's deletes fail, batch N+1's
PRIMARY transaction is rolled back too (its copy stays in ARCHIVE, to be taken over), and
the cursor goes back to the last batch whose deletes committed, so a retry selects both
again. With one lane (SQLite, a single writer) each batch is deleted as soon as it is
copied, before the next one is selected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from archive import attached
from archive.keys import Key
from archive.locks import RunnerLock
from archive.mover import BatchResult, CopiedBatch, Timeouts, copy_batch
from archive.policy import ArchivePolicy
from sediment.core.error_text import first_line

logger = logging.getLogger(__name__)


@dataclass
class _Open:
    """A copied batch and the PRIMARY transaction (on ``lane``) that still locks its rows."""

    batch: CopiedBatch | attached.AttachedBatch
    lane: int
    connection: sa.Connection
    transaction: sa.RootTransaction
    resources: ExitStack

    def delete_and_commit(self) -> BatchResult:
        try:
            result = self.batch.delete(self.connection)
            self.transaction.commit()
        except BaseException:
            self.roll_back()
            raise
        self.resources.close()
        return result

    def roll_back(self) -> None:
        _roll_back(self.transaction, self.resources)


def _roll_back(transaction: sa.RootTransaction | None, resources: ExitStack) -> None:
    try:
        if transaction is not None and transaction.is_active:
            transaction.rollback()
    except sa.exc.SQLAlchemyError as exc:  # a dead connection rolled back already
        logger.debug("rolling back a batch failed: %s", first_line(exc))
    finally:
        resources.close()


class BatchPipeline:
    """The batches of one run of ``policy``, selected by key after :attr:`cursor`.

    :param on_moved: called in the caller's thread with each batch whose PRIMARY deletes
        committed, in selection order (the ledger's count, progress); an exception it
        raises propagates like a failed batch.
    :param on_lock_retaken: called after the lock was lost and taken back (the runner
        checks that nobody ran the policy meanwhile).
    """

    def __init__(self, lock: RunnerLock, archive: sa.Engine, policy: ArchivePolicy, *,
                 cutoff: datetime, run_id: int, timeouts: Timeouts,
                 on_moved: Callable[[BatchResult], None],
                 on_lock_retaken: Callable[[], None]) -> None:
        self.lock = lock
        self.archive = archive
        self.policy = policy
        self.cutoff = cutoff
        self.run_id = run_id
        self.timeouts = timeouts
        self.on_moved = on_moved
        self.on_lock_retaken = on_lock_retaken
        #: Where the next batch starts: after the last key selected and not rolled back.
        self.cursor: Key | None = None
        #: After the last key of the last batch whose deletes committed.
        self.confirmed: Key | None = None
        self._deleting: tuple[_Open, Future[BatchResult]] | None = None
        self._threads = (ThreadPoolExecutor(1, thread_name_prefix=f"sediment-{policy.name}")
                         if lock.lanes > 1 else None)
        #: Two SQLite files: SQLite copies the rows itself (see :mod:`archive.attached`).
        self._copy: Callable[..., CopiedBatch | attached.AttachedBatch | None] = (
            attached.copy_batch if attached.applies(lock.primary, archive) else copy_batch)

    @property
    def roots_in_flight(self) -> int:
        """Roots copied whose deletes have not been counted yet."""
        return self._deleting[0].batch.roots if self._deleting is not None else 0

    def copy_next(self, limit: int) -> _Open | None:
        """Select, lock and copy the next batch of at most ``limit`` roots on a free lane.

        :returns: the batch, its PRIMARY transaction open; ``None`` when no aged root is left
            after :attr:`cursor`.
        """
        busy = self._deleting[0].lane if self._deleting is not None else None
        lane = next(index for index in range(self.lock.lanes) if index != busy)
        if not self.lock.holds(lane):
            self.drain()  # taking the lock back discards every lane's connection
            if self.lock.ensure_held():
                self.on_lock_retaken()
        resources, transaction = ExitStack(), None
        try:
            connection = resources.enter_context(self.lock.batch_connection(lane))
            transaction = connection.begin()
            batch = self._copy(connection, self.archive, self.policy, cutoff=self.cutoff,
                               after_key=self.cursor, limit=limit, run_id=self.run_id,
                               timeouts=self.timeouts)
        except BaseException:
            _roll_back(transaction, resources)
            raise
        if batch is None:
            _roll_back(transaction, resources)
            return None
        self.cursor = batch.last_key
        return _Open(batch, lane, connection, transaction, resources)

    def hand_over(self, opened: _Open) -> None:
        """Wait for the previous batch's deletes, then start ``opened``'s (in a thread when
        there are two lanes, at once with one).

        :raises: whatever the previous batch's deletes raised, after rolling ``opened``
            back and moving :attr:`cursor` back to before both.
        """
        try:
            self.drain()
        except BaseException:
            opened.roll_back()
            raise
        if self._threads is None:
            self._moved(opened, opened.delete_and_commit)
            return
        self._deleting = (opened, self._threads.submit(opened.delete_and_commit))

    def drain(self) -> None:
        """Wait for the batch whose deletes are running, and count it.

        :raises: what its deletes raised (the cursor is back before it: retry from there).
        """
        if self._deleting is None:
            return
        opened, deleting = self._deleting
        self._deleting = None
        self._moved(opened, deleting.result)

    def close(self) -> None:
        """Finish what is in flight without raising (the run is ending for another reason:
        a batch whose deletes fail now stays in both databases, for the next run)."""
        try:
            self.drain()
        except Exception as exc:  # reported; the run's own cause (if any) is what it ends with
            logger.warning("policy %s run %d: the last batch could not be finished (%s); its "
                           "rows stay in both databases until the next run", self.policy.name,
                           self.run_id, first_line(exc))
        if self._threads is not None:
            self._threads.shutdown()

    def _moved(self, opened: _Open, deleted: Callable[[], BatchResult]) -> None:
        try:
            result = deleted()
        except BaseException:
            self.cursor = self.confirmed
            raise
        self.confirmed = opened.batch.last_key
        self.on_moved(result)
