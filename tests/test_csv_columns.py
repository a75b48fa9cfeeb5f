"""The CSV writer of the SQLite fast path, a column at a time: byte for byte the ``csv``
module's output (and the general path's cell formatting) on random batches of every kind
of value, and stored timestamps written as the general path writes them, a whole column
at once or cell by cell."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from typing import Any

import pytest

from reporting.csv_columns import csv_records
from reporting.csv_export import FORMULA_PREFIXES, _cell
from reporting.sqlite_csv import TimestampColumn

#: Every character the writer treats specially, its own separator, a formula's first
#: characters and a few ordinary ones.
ALPHABET = ['a', ' ', '"', ',', '\r', '\n', '\x00', '\x01', '=', '+', '-', '@', '\t', "'",
            'é', '\u2028']


def random_text(rnd: random.Random) -> str:
    return "".join(rnd.choice(ALPHABET) for _ in range(rnd.randrange(5)))


def random_value(rnd: random.Random) -> Any:
    return rnd.choice([
        None, rnd.randint(-10**20, 10**20), rnd.random() * 1e300, float("nan"),
        bytes(rnd.randrange(256) for _ in range(rnd.randrange(4))), rnd.random() < 0.5,
        random_text(rnd), random_text(rnd)])


def column_makers(rnd: random.Random) -> list[Callable[[], Any]]:
    """Columns of one kind (where the writer takes its shortcuts) and of mixed kinds."""
    return [lambda: random_text(rnd), lambda: rnd.randint(-10**5, 10**5), lambda: None,
            lambda: random_value(rnd), lambda: rnd.choice(["", "abc", "x y", "a,b"]),
            lambda: rnd.choice(["plain", "with, comma"])]


@pytest.mark.parametrize("escape", [True, False])
def test_records_are_the_csv_modules_bytes(escape: bool) -> None:
    rnd = random.Random(20261205)
    makers = column_makers(rnd)
    for _ in range(5000):
        kinds = [rnd.choice(makers) for _ in range(rnd.randint(1, 4))]
        rows = [tuple(kind() for kind in kinds) for _ in range(rnd.randint(1, 6))]
        expected = io.StringIO()
        csv.writer(expected, lineterminator="\r\n").writerows(
            [[_cell(value, escape) for value in row] for row in rows])
        written = csv_records(
            list(zip(*rows, strict=True)), written=lambda value: _cell(value, escape),
            formula_prefixes=FORMULA_PREFIXES if escape else None)
        assert written == expected.getvalue(), rows


STORED = ["2026-03-04 05:06:07", "2026-03-04 05:06:07.123456", "2026-03-04 05:06:07+00:00",
          "2026-03-04 05:06:07.123456+00:00"]
#: In none of the forms: parsed and written as the general path does.
ODD = ["2026-03-04 05:06:07.5", "2026-03-04T05:06:07", "\uff12\uff1026-03-04 05:06:07", 1700000000,
       "2026-03-04 05:06:07+01:00"]


@pytest.mark.parametrize("zoneless_mark", ["Z", ""])
def test_a_column_of_timestamps_is_written_as_each_alone(zoneless_mark: str) -> None:
    """The whole-column replacements give what each value gives alone, whether the
    column holds one form, several, empty cells or values in no form."""
    seen: list[Any] = []

    def in_python(value: Any) -> str:
        seen.append(value)
        return f"python:{value}"

    column = TimestampColumn(parse=lambda text: f"parsed {text}", zoneless_mark=zoneless_mark)
    rnd = random.Random(7)
    for _ in range(500):
        pool = rnd.choice([[rnd.choice(STORED)], STORED, [*STORED, None], STORED + ODD])
        values = [rnd.choice(pool) for _ in range(rnd.randint(1, 6))]
        assert column.texts(values, in_python) == [
            column.one(value, in_python) for value in values]
    assert column.texts(STORED, in_python) == [
        "2026-03-04T05:06:07.000000" + zoneless_mark,
        "2026-03-04T05:06:07.123456" + zoneless_mark,
        "2026-03-04T05:06:07.000000Z", "2026-03-04T05:06:07.123456Z"]
    seen.clear()
    assert column.texts(ODD[:2], in_python) == [
        "python:parsed 2026-03-04 05:06:07.5", "python:parsed 2026-03-04T05:06:07"]
    assert seen == ["parsed 2026-03-04 05:06:07.5", "parsed 2026-03-04T05:06:07"]
