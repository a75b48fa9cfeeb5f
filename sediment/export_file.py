"""Where ``report --csv`` writes: a file, whole or not at all; or a stream, as it comes.

A file is written beside itself as ``.NAME.partial`` and renamed over ``NAME`` once the last
row is in, so a failed export (a database error, a full disk, Ctrl-C) leaves neither a
truncated file nor the partial one. ``-`` is standard output, and a target that exists but
is no regular file (``/dev/stdout``, a named pipe) is written as it streams: renaming a
file over it replaced the device node or the pipe itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

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


def check_target(target: str) -> None:
    """Refuse, before any work, a target no file can be written at.

    :raises ExportRefused: ``target`` is a folder, or in a folder that does not exist.
    """
    path = Path(target)
    if target == STDOUT:
        return
    if path.is_dir():
        raise ExportRefused(f"--csv {target!r}: is a folder: name the file to write", usage=True)
    if not path.parent.is_dir():
        raise ExportRefused(f"--csv {target!r}: its folder does not exist", usage=True)


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
