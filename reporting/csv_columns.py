"""CSV records of a batch of rows, built a column at a time.

``csv.writer`` looks at every cell in turn, and the general path first passes every cell
through a formatter: for a download of a million rows of seven columns that is seven
million steps in Python, the larger part of the SQLite fast path's time. The columns of a
batch are mostly alike, though: all text and none needing quotes, all integers, all empty.
Here each column of a batch is checked at once (the set of its values' types; its text
joined into one string and searched for the characters that matter, in C), and only a
column holding something else is formatted cell by cell. The records are then joined with
``str.join``.

The bytes are the ``csv`` module's, with its default ``QUOTE_MINIMAL`` rules and a CRLF
line end, as the general path writes them: the test suite compares the two on random text
of every character that matters, and the downloads of both paths on stored values of
every kind.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

#: What ``csv.writer`` (``QUOTE_MINIMAL``, ``lineterminator="\r\n"``) puts a field in
#: quotes for: the delimiter, the quote character and the line terminator's characters.
_QUOTED_FOR = ('"', ",", "\r", "\n")
#: Joins a column's cells for the searches; it is neither a formula's first character nor
#: one of :data:`_QUOTED_FOR`, so an empty cell cannot look like either. A cell holding it
#: at worst sends its column down the cell-by-cell path, which writes the same bytes.
SEPARATOR = "\x01"
_NONE = type(None)


def csv_chunks(header: Sequence[str], batches: Iterable[Sequence[Sequence[Any]]], *,
               written: Callable[[Any], Any], formula_prefixes: Sequence[str] | None,
               chunk_bytes: int) -> Iterator[bytes]:
    """The header and then each batch (given as its columns, see :func:`csv_records`) as
    CSV, in chunks of about ``chunk_bytes`` (the header alone when there is no row)."""
    header_line = io.StringIO()
    # RFC 4180's CRLF: the csv module quotes a field only for characters of its line
    # terminator, so "\n" alone would leave a bare carriage return unquoted.
    csv.writer(header_line, lineterminator="\r\n").writerow(header)
    pending = [header_line.getvalue()]
    size = 0
    for columns in batches:
        records = csv_records(columns, written=written, formula_prefixes=formula_prefixes)
        pending.append(records)
        size += len(records)
        if size >= chunk_bytes:
            yield "".join(pending).encode()
            pending.clear()
            size = 0
    if pending:
        yield "".join(pending).encode()


def csv_records(columns: Sequence[Sequence[Any]], *, written: Callable[[Any], Any],
                formula_prefixes: Sequence[str] | None) -> str:
    """A batch of rows, given as its ``columns`` (each of the same length), as CSV records
    each ended by CRLF: what ``csv.writer(buffer, lineterminator="\\r\\n").writerows``
    writes for ``written`` of each value.

    :param written: what a value other than text or an integer is written as (a blob as
        hex, a timestamp as text), and text that starts a formula; None is written empty.
    :param formula_prefixes: the first characters of text a spreadsheet would run: text
        starting with one goes through ``written`` (which escapes it); None for none.
    """
    if not columns or not columns[0]:
        return ""
    cells = [_cells(values, written, formula_prefixes) for values in columns]
    if len(cells) == 1:
        # The csv module writes a record of one empty field as "", so that it is not read
        # as an empty line.
        records: Any = (cell or '""' for cell in cells[0])
    else:
        records = map(",".join, zip(*cells, strict=True))
    return "\r\n".join(records) + "\r\n"


def _cells(values: Sequence[Any], written: Callable[[Any], Any],
           formula_prefixes: Sequence[str] | None) -> Sequence[str]:
    """One column's cells as the csv module writes them, quotes included."""
    kinds = set(map(type, values))
    if kinds == {int}:
        return list(map(str, values))  # digits and a sign: never quoted, never a formula
    if kinds == {_NONE}:
        return [""] * len(values)
    if kinds == {str}:
        cells: Sequence[str] = values
        joined = SEPARATOR.join(values)
        if formula_prefixes and _formula_start(formula_prefixes).search(
                SEPARATOR + joined):
            cells = [str(written(cell)) for cell in values]
            joined = SEPARATOR.join(cells)
    else:
        cells = ["" if value is None else str(written(value)) for value in values]
        joined = SEPARATOR.join(cells)
    found = [character for character in _QUOTED_FOR if character in joined]
    if not found:
        return cells
    # Inline rather than a function per cell: the call was half of the cost.
    if found == [","]:  # the common case, text with commas: nothing to double
        return ['"' + cell + '"' if "," in cell else cell for cell in cells]
    return ['"' + cell.replace('"', '""') + '"'
            if '"' in cell or "," in cell or "\r" in cell or "\n" in cell else cell
            for cell in cells]


@functools.lru_cache(maxsize=4)
def _formula_start(prefixes: Sequence[str]) -> re.Pattern[str]:
    """Finds a cell starting with one of ``prefixes`` in a column joined by the separator
    (with one before the first cell): one pass in C, where a search per prefix took
    eight."""
    return re.compile(re.escape(SEPARATOR) + "[" + "".join(map(re.escape, prefixes)) + "]")
