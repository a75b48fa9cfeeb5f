"""Retrying a batch after a dropped connection or a timeout, within a budget only progress
renews.

A batch is idempotent, so it is retried whole, with doubling backoff. The budget counts
failures since the last batch whose deletes committed, not per attempt: in the pipelined
archive run a batch's delete fails inside the *next* step, and that step's retry (which
selects the failed batch again and starts its delete) succeeds before anything has moved.
With a budget per attempt, a batch that fails every time (its ``DELETE`` always longer
than the statement timeout) was copied again and again, and the run never ended.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from sediment.core.error_text import first_line
from sediment.core.settings import ArchiveSettings

logger = logging.getLogger(__name__)

#: What a retry may cure: a dropped connection, a database restarting, a statement
#: cancelled by its timeout (psycopg2's ``QueryCanceled`` is an ``OperationalError``).
RETRYABLE = (sa.exc.OperationalError, sa.exc.InterfaceError)


@dataclass
class RetryBudget:
    """Attempts left to a run before its next progress (:meth:`progressed`)."""

    settings: ArchiveSettings
    failures: int = 0

    def progressed(self) -> None:
        """A batch moved: the next failure is a first one again."""
        self.failures = 0

    def backoff_after(self, error: BaseException) -> float | None:
        """Count a failure: seconds to wait before trying again, or ``None`` when the
        budget is spent (the caller raises ``error``). Logged either way."""
        self.failures += 1
        retries = self.settings.retry_attempts - 1
        if self.failures > retries:
            if retries:
                logger.warning("batch failed again (%s), %d times without progress: giving up",
                               first_line(error), self.failures)
            return None
        delay = self.settings.retry_backoff.total_seconds() * (1 << (self.failures - 1))
        logger.warning("batch failed (%s); retry %d of %d in %.1fs", first_line(error),
                       self.failures, retries, delay)
        return delay


T = TypeVar("T")


def with_retries(settings: ArchiveSettings, stop: threading.Event,
                 attempt: Callable[[], T], budget: RetryBudget | None = None) -> T:
    """Run a whole batch (or a ledger write), again after a retryable failure, with
    doubling backoff, until ``budget`` (by default, a fresh one for this call alone) is
    spent or a stop is requested."""
    budget = budget if budget is not None else RetryBudget(settings)
    while True:
        try:
            return attempt()
        except RETRYABLE as exc:
            delay = None if stop.is_set() else budget.backoff_after(exc)
            if delay is None:
                raise
            stop.wait(delay)
