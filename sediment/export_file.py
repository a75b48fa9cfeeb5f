"""Where ``report --csv`` writes: a file, whole or not at all; or a stream, as it comes.

A file is written beside itself as ``.NAME.partial`` and renamed over ``NAME`` once the last
row is in, so a failed export (a database error, a full disk, Ctrl-C) leaves neither a
truncated file nor the partial one. ``-`` is standard output, and a target that exists but
is no regular file (``/dev/stdout``, a named pipe) is written as it streams: renaming a
file over it replaced the device node or the pipe itself. Sediment's own files (the
settings, a SQLite database and its journal) and any SQLite database are never replaced.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa

from sediment.core.settings import DEFAULT_SETTINGS_PATH, Settings

#: The ``--csv`` value that means standard output.
STDOUT = "-"


class ExportRefused(Exception):
    """The target cannot be written; the message names it, and exit code 2 or 1 fits."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


def is_stream(target: str) -> bool:
    """Whether ``target`` is written as it streams (standard output, a device, a pipe)."""
    path = Path(target)
    return target == STDOUT or (path.exists() and not path.is_file() and not path.is_dir())


#: The first bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def check_target(target: str, protected: Mapping[Path, str] | None = None) -> None:
    """Refuse, before any work, a target no file can be written at, or one a CSV must not
    replace: ``report orders --csv data/primary.sqlite3`` replaced PRIMARY with a CSV.

    :param protected: files never to replace, each with what it is (the settings file,
        the databases' files).
    :raises ExportRefused: ``target`` is a folder, in a folder that does not exist, a
        protected file, or a SQLite database.
    """
    path = Path(target)
    if target == STDOUT:
        return
    if path.is_dir():
        raise ExportRefused(f"--csv {target!r}: is a folder: name the file to write", usage=True)
    if not path.parent.is_dir():
        raise ExportRefused(f"--csv {target!r}: its folder does not exist", usage=True)
    resolved = path.resolve()
    what = next((what for known, what in (protected or {}).items()
                 if known.resolve() == resolved), None)
    if what is None and path.is_file() and _starts_with(path, SQLITE_HEADER):
        what = "a SQLite database"
    if what is not None:
        raise ExportRefused(f"--csv {target!r}: is {what}, which the CSV would replace; "
                            "name another file", usage=True)


def protected_files(settings_file: str | None, settings: Settings) -> dict[Path, str]:
    """The files of this Sediment a CSV must never replace: its settings file (``None``:
    the default one), and each SQLite database's file with its journal, WAL and
    shared-memory files and the runners' lock files beside it."""
    files = {Path(settings_file or DEFAULT_SETTINGS_PATH): "the settings file"}
    for label, url in (("PRIMARY", settings.database.primary_url),
                       ("ARCHIVE", settings.database.archive_url)):
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            continue
        database = Path(parsed.database)
        files[database] = f"{label}'s database"
        files |= {Path(f"{database}{suffix}"): f"{label}'s {suffix[1:]} file"
                  for suffix in ("-journal", "-wal", "-shm")}
        # A runner's lock: a file renamed over it lets a second runner lock the new one.
        files |= {lock: "an archival runner's lock file"
                  for lock in database.parent.glob(f"{database.name}.archive-*.lock")}
    return files


def _starts_with(path: Path, header: bytes) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(header)) == header
    except OSError:
        return False


def write_export(target: str, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``target`` (a path, or ``-``).

    :raises ExportRefused: the target is a folder or in none (usage), or writing it failed
        (nothing is left behind but what a stream already received).
    """
    if target == STDOUT:
        _copy(chunks, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    check_target(target)
    path = Path(target)
    if is_stream(target):
        try:
            with open(path, "wb") as out:
                _copy(chunks, out)
        except OSError as exc:
            raise _refused(target, exc, "") from exc
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as out:
            _copy(chunks, out)
        partial.replace(path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _refused(target, exc, "; nothing was written") from exc
        raise


def _copy(chunks: Iterable[bytes], out: BinaryIO) -> None:
    for chunk in chunks:
        out.write(chunk)


def _refused(target: str, error: OSError, outcome: str) -> ExportRefused:
    return ExportRefused(f"--csv {target!r}: cannot write it ({error.strerror or error})"
                         f"{outcome}", usage=False)
