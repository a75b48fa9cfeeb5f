"""What every Sediment command shares: exit codes, argument types, stop signals and
progress bars.

Exit codes: 0 success (an archival run that ended cleanly or at a limit), 1 failure,
2 bad usage or bad settings, 3 another runner holds the archival lock (``lock_busy``), or
took it while this run had lost it (``lock_lost``).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

from sediment.core.instants import InstantOutOfRange, parse_instant
from sediment.core.settings import MAX_WORKERS, parse_duration

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_LOCK_BUSY = 0, 1, 2, 3

#: The signals that ask a Sediment process to stop: ``kill``/systemd, and Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def fail(message: str, exit_code: int) -> int:
    """Print a command's one-line error on stderr, prefixed ``sediment:``; return the exit
    code to end with."""
    print(f"sediment: {message}", file=sys.stderr)
    return exit_code


#: The largest whole number both databases store (a run id, a row count): a larger one
#: raised OverflowError in SQLite's driver.
LARGEST_COUNT = 2**63 - 1
#: Most customers one ``seed`` writes: each is held in memory until its orders are made
#: (about 0.8 KB apiece, so 1,000,000 take some 800 MB).
MOST_SEEDED_CUSTOMERS = 1_000_000


def count(text: str) -> int:
    """An argparse type: a whole number, zero or more (``1_000_000`` allowed)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    if value > LARGEST_COUNT:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {LARGEST_COUNT:,}, the "
                                         "largest whole number the databases store")
    return value


def customer_count(text: str) -> int:
    """An argparse type: customers for ``seed`` (an absurd count was read into memory until
    the kernel killed the process)."""
    value = count(text)
    if value > MOST_SEEDED_CUSTOMERS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than {MOST_SEEDED_CUSTOMERS:,}, the most one seed holds in "
            "memory; seed more with further --append runs")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number, one or more."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def worker_count(text: str) -> int:
    """An argparse type: worker processes, 1 to ``service.workers``'s bound (2,000 forked
    gunicorn workers until the machine ran out of memory)."""
    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_WORKERS:,}")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port."""
    value = count(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def instant(text: str) -> datetime:
    """An argparse type: an ISO-8601 date or instant (no zone means UTC)."""
    try:
        return parse_instant(text)
    except InstantOutOfRange as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is {exc}") from None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 date or instant, e.g. 2026-01-31T00:00:00Z"
        ) from None


def duration(text: str) -> timedelta:
    """An argparse type: a duration such as ``90s``, ``10m`` or ``2h``, longer than zero
    (``--max-runtime 0s`` started runs that ended at once, moving nothing)."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero")
    return value


def words(text: str) -> str:
    """An argparse type: text that says something (a hold's reason was accepted empty)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty")
    return text.strip()


@contextmanager
def on_stop_signals(handler: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Call ``handler`` on SIGTERM or SIGINT while the block runs; restore the previous
    handlers after it."""
    def receive(signum: int, _frame: Any) -> None:
        handler(signal.Signals(signum))

    previous = {sig: signal.signal(sig, receive) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def progress_bar(*, total: float, desc: str, **options: Any) -> tqdm[Any]:
    """A bar on stderr counting rows, redrawn at most twice a second.

    tqdm is imported by the first bar, not with the command line: ``serve`` never shows
    one, and its memory at rest is kept for what it does use.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=" rows", unit_scale=True, file=sys.stderr,
                mininterval=0.5, **options)
