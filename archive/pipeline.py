"""A run's batches, overlapped: batch N+1 is selected while batch N is copied into ARCHIVE,
and copied while N's PRIMARY deletes run.

Every batch still commits in the order that makes a crash harmless (ARCHIVE's copy, then
PRIMARY's deletes; see :mod:`archive.mover`). What overlaps is work on different rows in
different database sessions. On PostgreSQL the runner lock has two lanes (connections, see
:mod:`archive.locks`), and a run has two threads beside the caller's: the *copier* runs
step 2 (ARCHIVE only) of one batch after another, in selection order, and the *deleter*
runs step 3 (on the batch's lane) of one batch after another. The caller's thread selects
batch N+1 on the free lane (step 1) and hands it to the copier; then it waits for batch N's
deletes, counts them, and hands N+1 to the deleter, which starts as soon as N+1's copy has
committed. Per batch, the run then takes about the longest of the three steps, not their
sum (the copier's ledger rows, which counting a batch waits for, are written last in its
transaction, so that wait is short).

At most one batch is between its two commits while the next is being copied, so recovery
still finds every row in both databases inside the run's pending window, as for one batch.
Batches end in the order they were selected. When batch N's copy or deletes fail, batch N+1
is rolled back in PRIMARY too, once its copy has finished (a copy that committed stays in
ARCHIVE, to be taken over), and the cursor goes back to the last batch whose deletes
committed, so a retry selects both again. With one lane (SQLite, a single writer), or when
ARCHIVE is SQLite (whose one writer the ledger needs meanwhile), each batch is copied as soon
as it is selected, and deleted as soon as it is copied, before the next one is selected.
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
from archive.mover import (
    ArchiveError,
    BatchResult,
    CopiedBatch,
    SelectedBatch,
    Timeouts,
    select_batch,
)
from archive.policy import ArchivePolicy
from sediment.core.error_text import first_line

logger = logging.getLogger(__name__)

Batch = CopiedBatch | attached.AttachedBatch


class BatchAbandoned(ArchiveError):
    """A batch was not copied because the copy of the batch before it failed."""


@dataclass
class _Open:
    """A selected batch and the PRIMARY transaction (on ``lane``) that locks its rows."""

    batch: SelectedBatch | attached.AttachedBatch
    lane: int
    connection: sa.Connection
    transaction: sa.RootTransaction
    resources: ExitStack
    #: Its copy into ARCHIVE, running in the copier thread; None when already copied.
    copying: Future[CopiedBatch] | None = None

    def delete_and_commit(self) -> BatchResult:
        """Wait for the copy, then delete and commit in PRIMARY (or roll back)."""
        try:
            copied = self.copying.result() if self.copying is not None else self.batch
            assert isinstance(copied, Batch)  # without a copier, start_next copied it
            result = copied.delete(self.connection)
            self.transaction.commit()
        except BaseException:
            self.roll_back()
            raise
        self.resources.close()
        return result

    def roll_back(self) -> None:
        """Roll back in PRIMARY once the copy (if any) has ended, however it ended."""
        if self.copying is not None:
            self.copying.exception()  # waits; the failure is reported by whoever awaits it
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
        #: The copy handed to the copier last: the next one waits for it, and is
        #: abandoned if it failed.
        self._copying: Future[CopiedBatch] | None = None
        overlapped = lock.lanes > 1
        name = f"sediment-{policy.name}"
        self._deleter = ThreadPoolExecutor(1, f"{name}-delete") if overlapped else None
        self._copier = (ThreadPoolExecutor(1, f"{name}-copy")
                        if overlapped and archive.dialect.name == "postgresql" else None)
        #: Two SQLite files: SQLite copies the rows itself (see :mod:`archive.attached`).
        self._attached = attached.applies(lock.primary, archive)

    @property
    def roots_in_flight(self) -> int:
        """Roots selected whose deletes have not been counted yet."""
        return self._deleting[0].batch.roots if self._deleting is not None else 0

    def start_next(self, limit: int) -> _Open | None:
        """Select and lock the next batch of at most ``limit`` roots on a free lane, and
        start its copy: in the copier thread when there is one, else at once.

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
            select = attached.copy_batch if self._attached else select_batch
            batch = select(connection, self.archive, self.policy, cutoff=self.cutoff,
                           after_key=self.cursor, limit=limit, run_id=self.run_id,
                           timeouts=self.timeouts)
            if isinstance(batch, SelectedBatch) and self._copier is None:
                batch = batch.copy(self.archive, self.timeouts)
        except BaseException:
            _roll_back(transaction, resources)
            raise
        if batch is None:
            _roll_back(transaction, resources)
            return None
        self.cursor = batch.last_key
        opened = _Open(batch, lane, connection, transaction, resources)
        if self._copier is not None:
            assert isinstance(batch, SelectedBatch)
            opened.copying = self._copier.submit(self._copy_after, self._copying, batch)
            self._copying = opened.copying
        return opened

    def hand_over(self, opened: _Open) -> None:
        """Wait for the previous batch's deletes, then start ``opened``'s, which wait for its
        copy (in the deleter thread when there are two lanes, at once with one).

        :raises: whatever the previous batch's copy or deletes raised, after rolling
            ``opened`` back and moving :attr:`cursor` back to before both.
        """
        try:
            self.drain()
        except BaseException:
            opened.roll_back()
            self._retry_from_confirmed()
            raise
        if self._deleter is None:
            self._moved(opened, opened.delete_and_commit)
            return
        self._deleting = (opened, self._deleter.submit(opened.delete_and_commit))

    def drain(self) -> None:
        """Wait for the batch in flight (its copy, then its deletes), and count it.

        :raises: what its copy or deletes raised (the cursor is back before it: retry from
            there).
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
        for threads in (self._copier, self._deleter):
            if threads is not None:
                threads.shutdown()

    def _copy_after(self, previous: Future[CopiedBatch] | None,
                    batch: SelectedBatch) -> CopiedBatch:
        """Step 2 in the copier thread, which has finished ``previous`` already."""
        if previous is not None and previous.exception() is not None:
            raise BatchAbandoned(f"policy {self.policy.name}: a batch was not copied because "
                                 "the one before it failed; both are retried")
        return batch.copy(self.archive, self.timeouts)

    def restart(self) -> None:
        """Select from the first key again, once nothing is in flight (after :meth:`drain`):
        the pass's deletes may have freed rows it went by (see
        :func:`archive.policy.unreferenced_by_others`)."""
        assert self._deleting is None
        self.cursor = self.confirmed = None
        self._copying = None

    def _retry_from_confirmed(self) -> None:
        """Nothing is in flight any more: the next batch starts after the last one whose
        deletes committed, and its copy depends on no failed one."""
        self.cursor = self.confirmed
        self._copying = None

    def _moved(self, opened: _Open, deleted: Callable[[], BatchResult]) -> None:
        try:
            result = deleted()
        except BaseException:
            self._retry_from_confirmed()
            raise
        self.confirmed = opened.batch.last_key
        self.on_moved(result)
